"""DICOM over TLS with client certificates (PS3.15 B.1) under the access policy.

A hub with ``PACS_HUB_DICOM_TLS_CERT``/``_KEY``/``_CA`` (a test CA made here with
``cryptography``) and the policy on; node ``PACS_T`` is registered ``--tls``, node
``PLAIN_T`` is not. pynetdicom SCUs connect over TLS with or without a client
certificate (dcmtk's TLS options need files in its own formats; pynetdicom takes an
``ssl.SSLContext``).
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom import sop_class as sc

from tests.conftest import Hub, start_hub
from tests.regional.study_factory import make_study


def test_tls_client_certificate_names() -> None:
    """The AE title is read from the certificate's CN or a subjectAltName DNS name."""
    from pacs_hub.gateway.access import certificate_names

    cert = {
        "subject": ((("commonName", "PACS_A"),),),
        "subjectAltName": (("DNS", "pacs-a.example"), ("DNS", "PACS_A2")),
    }
    assert certificate_names(cert) == {"PACS_A", "pacs-a.example", "PACS_A2"}


# -- TLS ---------------------------------------------------------------------------------------


def _certificate(folder: Path, name: str, issuer: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """A key and certificate for ``name`` (self-signed CA when ``issuer`` is None), as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer_cert = issuer if issuer else (key, None)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)  # fmt: skip
    cert = builder.sign(signer_key, hashes.SHA256())
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _start_hub(data_dir: Path, **env: str) -> Hub:
    """start_hub, tried again when the hub is not healthy within its 30 s (a loaded
    machine: the gateway process imports slowly); the same data folder is reused."""
    for _attempt in range(2):
        try:
            return start_hub(data_dir, **env)
        except AssertionError:
            continue
    return start_hub(data_dir, **env)


@pytest.fixture(scope="module")
def tls_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Path]]:
    folder = tmp_path_factory.mktemp("access-tls")
    ca = _certificate(folder, "CA")
    for name in ("HUB", "PACS_T", "OTHER"):
        _certificate(folder, name, ca)
    hub = _start_hub(
        folder / "data",
        PACS_HUB_AUTH_REQUIRED="true",
        PACS_HUB_PREFETCH_ENABLED="false",
        PACS_HUB_DICOM_TLS_CERT=str(folder / "HUB.pem"),
        PACS_HUB_DICOM_TLS_KEY=str(folder / "HUB.key"),
        PACS_HUB_DICOM_TLS_CA=str(folder / "CA.pem"),
    )
    try:
        hub.cli("establishments", "add", "T", "Etablissement T")
        hub.cli("nodes", "add", "PACS_T", "127.0.0.1", "104", "--establishment", "T", "--tls",
                "--role", "workstation")  # fmt: skip
        hub.cli("nodes", "add", "PLAIN_T", "127.0.0.1", "104", "--establishment", "T",
                "--role", "workstation")  # fmt: skip
        time.sleep(3.5)  # the gateway's node directory TTL
        yield hub, folder
    finally:
        hub.stop()


def _tls_associate(hub: Hub, folder: Path, title: str, cert: str | None) -> Any:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(folder / "CA.pem"))
    if cert is not None:
        context.load_cert_chain(str(folder / f"{cert}.pem"), str(folder / f"{cert}.key"))
    ae = AE(ae_title=title)
    ae.add_requested_context(sc.Verification)
    ae.add_requested_context(sc.CTImageStorage, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate(
        "127.0.0.1", hub.dicom_port, ae_title=hub.ae_title, tls_args=(context, "localhost")
    )


def test_tls_node_with_its_certificate_stores(tls_hub: tuple[Hub, Path], tmp_path: Path) -> None:
    """Over TLS, a tls node presenting a certificate naming its AE title associates,
    echoes and stores (the hub's direct PDU writes work on a TLS socket too)."""
    hub, folder = tls_hub
    assoc = _tls_associate(hub, folder, "PACS_T", "PACS_T")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        _uid, files = make_study(tmp_path, patient_id="TLS-1", count=1)
        answer = assoc.send_c_store(files[0])
        assert answer.Status == 0
    finally:
        assoc.release()
    # a node not marked tls needs no client certificate (but still TLS on this port)
    plain = _tls_associate(hub, folder, "PLAIN_T", None)
    assert plain.is_established
    plain.release()


@pytest.mark.parametrize("cert", (None, "OTHER"))
def test_tls_node_without_its_certificate_refused(
    tls_hub: tuple[Hub, Path], cert: str | None
) -> None:
    """A tls node without a client certificate, or with another AE title's, is refused."""
    hub, folder = tls_hub
    assoc = _tls_associate(hub, folder, "PACS_T", cert)
    established = assoc.is_established
    if established:
        assoc.release()
    assert not established
