"""The audit trail beyond its core: tamper detection through the CLI, retention that
keeps the chain provable, queries with pages (API and CLI, scoped by role), DICOM
audit messages validated against PS3.15 A.5.1, and syslog over TLS (RFC 5424/5425)
to a repository that goes down and comes back (nothing lost).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import re
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from sqlalchemy import insert, select

from pacs_hub.config import Settings
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, Patient, Study
from pacs_hub.trust import audit, syslog
from pacs_hub.trust.atna import SCHEMA, AuditSource, messages
from pacs_hub.trust.audit import AuditEntry, record
from pacs_hub.trust.audit_query import AuditFilter, AuditRecord, find_entries
from pacs_hub.trust.audit_tasks import prune_expired
from pacs_hub.trust.models import AuditEvent
from tests.conftest import Hub, free_port, start_hub, wait_until
from tests.storage.conftest import database, postgres_server  # noqa: F401 (fixtures)

PASSWORD = "correct-horse-battery"
NOW = datetime.now(UTC).replace(tzinfo=None)
OLD = NOW - timedelta(days=200)


def _schema() -> etree.RelaxNG:
    """The schema of PS3.15 A.5.1.1, compiled here independently of the code under test."""
    return etree.RelaxNG.from_rnc_string(SCHEMA.read_text(encoding="utf-8").replace("##", "#"))


SCHEMA_CHECK = _schema()


def entry(action: str = "view", **kw: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "actor_kind": "user",
        "actor_id": "user:alice",
        "outcome": "allow",
        "purpose": "care",
        "rule": "establishment",
    }
    values.update(kw)
    return AuditEntry(action=action, **values)


def index_of(data_dir: Path) -> Database:
    return Database(f"sqlite:///{(data_dir / 'index.sqlite3').resolve()}", run_migrations=False)


def append(db: Database, *entries: AuditEntry, at: datetime | None = None) -> list[int]:
    with db.session() as session:
        return [record(session.connection(), e, at=at) for e in entries]


def cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PACS_HUB_DATA_DIR=str(data_dir), **env)
    return subprocess.run(
        [sys.executable, "-m", "pacs_hub.cli", "audit", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def secured_hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub with the access policy on."""
    running = start_hub(tmp_path / "data", PACS_HUB_AUTH_REQUIRED="true")
    yield running
    running.stop()


def service_token(hub: Hub, username: str, *roles: str, establishment: str = "") -> str:
    """A bearer token of a service account holding ``roles`` (client_credentials)."""
    args = ["users", "add", username, "--role", "service", "--password", PASSWORD]
    for role in roles:
        args += ["--role", role]
    if establishment:
        args += ["--establishment", establishment]
    hub.cli(*args)
    answer = httpx.post(
        f"{hub.url}/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(username, PASSWORD),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


# --- tampering -------------------------------------------------------------------------


def test_verify_names_the_edited_or_deleted_entry(secured_hub: Hub) -> None:
    # Entries through the real hub: a refused (anonymous) and an allowed reading.
    assert httpx.get(f"{secured_hub.url}/api/audit", timeout=10).status_code == 401
    admin = service_token(secured_hub, "auditor", "regional-admin")
    page = httpx.get(
        f"{secured_hub.url}/api/audit",
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert page.status_code == 200, page.text
    db = index_of(secured_hub.data_dir)
    ids = append(db, entry("view"), entry("query", outcome="deny"), entry("retrieve"))
    ok = cli(secured_hub.data_dir, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact" in ok.stdout

    con = sqlite3.connect(secured_hub.data_dir / "index.sqlite3")
    try:
        con.execute("UPDATE audit_events SET outcome = 'allow' WHERE id = ?", (ids[1],))
        con.commit()
        edited = cli(secured_hub.data_dir, "verify")
        assert edited.returncode == 1
        assert f"entry {ids[1]}:" in edited.stdout
        assert "content changed" in edited.stdout
        con.execute("UPDATE audit_events SET outcome = 'deny' WHERE id = ?", (ids[1],))
        con.commit()
        assert cli(secured_hub.data_dir, "verify").returncode == 0  # restored: intact again

        con.execute("DELETE FROM audit_events WHERE id = ?", (ids[1],))
        con.commit()
        deleted = cli(secured_hub.data_dir, "verify")
        assert deleted.returncode == 1
        assert f"entry {ids[2]}: does not follow entry {ids[0]}" in deleted.stdout
    finally:
        con.close()


def test_removing_the_newest_entries_is_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = Database(Settings(data_dir=data).index_url)
    ids = append(db, entry(), entry(), entry())
    con = sqlite3.connect(data / "index.sqlite3")
    con.execute("DELETE FROM audit_events WHERE id = ?", (ids[-1],))
    con.commit()
    con.close()
    result = cli(data, "verify")
    assert result.returncode == 1
    assert "newest entries were removed" in result.stdout


# --- retention -------------------------------------------------------------------------


def test_retention_prunes_old_entries_and_the_chain_still_verifies(
    database: Database,  # noqa: F811 (fixture)
    tmp_path: Path,
) -> None:
    old = append(database, *[entry("view", study_uid=f"1.2.3.{i}") for i in range(5)], at=OLD)
    kept = append(database, entry("query"), entry("retrieve"))
    settings_ = Settings(data_dir=tmp_path, audit_retention_days=183)
    assert prune_expired(settings_, database, batch=2) == len(old)  # three batches
    assert prune_expired(settings_, database, batch=2) == 0  # idempotent
    with database.read_connection() as conn:
        assert audit.verify(conn) == []
        left = conn.execute(select(AuditEvent.id, AuditEvent.action)).all()
    ids = [row.id for row in left]
    assert not set(old) & set(ids)
    assert set(kept) <= set(ids)
    assert [row.action for row in left].count(audit.PRUNE_ACTION) == 3
    # New entries after the checkpoints keep the chain going.
    append(database, entry("view"))
    with database.read_connection() as conn:
        assert audit.verify(conn) == []


def test_retention_never_prunes_what_was_not_shipped(
    database: Database,  # noqa: F811 (fixture)
    tmp_path: Path,
) -> None:
    ids = append(database, entry(), entry(), entry(), at=OLD)
    syslog.write_cursor(tmp_path, ids[0])  # only the first reached the repository
    settings_ = Settings(data_dir=tmp_path, audit_syslog_url="tls://127.0.0.1:6514")
    assert prune_expired(settings_, database) == 1
    with database.read_connection() as conn:
        assert audit.verify(conn) == []
        left = set(conn.execute(select(AuditEvent.id)).scalars())
    assert {ids[1], ids[2]} <= left


def test_tampering_after_retention_is_still_found(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = Database(Settings(data_dir=data).index_url)
    append(db, entry(), entry(), at=OLD)
    kept = append(db, entry("query"), entry("retrieve"))
    pruned = cli(data, "prune")
    assert pruned.returncode == 0 and "2 entries" in pruned.stdout
    assert cli(data, "verify").returncode == 0
    con = sqlite3.connect(data / "index.sqlite3")
    con.execute("DELETE FROM audit_events WHERE id = ?", (kept[0],))  # the first kept one
    con.commit()
    con.close()
    broken = cli(data, "verify")
    assert broken.returncode == 1
    assert f"entry {kept[1]}: does not follow" in broken.stdout


def test_retention_keeps_tampered_entries_as_evidence(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = Database(Settings(data_dir=data).index_url)
    old = append(db, entry(), entry("delete"), at=OLD)
    append(db, entry("query"))
    con = sqlite3.connect(data / "index.sqlite3")
    con.execute("UPDATE audit_events SET action = 'view' WHERE id = ?", (old[1],))
    con.commit()
    con.close()
    refused = cli(data, "prune")
    assert refused.returncode == 2
    assert f"entry {old[1]} content changed" in refused.stdout
    with db.read_connection() as conn:
        assert set(old) <= set(conn.execute(select(AuditEvent.id)).scalars())
    assert f"entry {old[1]}:" in cli(data, "verify").stdout


# --- queries ---------------------------------------------------------------------------


def test_filters_and_pages(database: Database) -> None:  # noqa: F811 (fixture)
    append(database, entry("view", actor_id="user:bob", regional_pk=7), at=OLD)
    ids = append(
        database,
        entry("view", regional_pk=7, study_uid="1.2.7.1"),
        entry("query", outcome="deny", regional_pk=8),
        entry("retrieve", actor_id="node:CT1", actor_kind="node", study_uid="1.2.7.1"),
        entry("share", regional_pk=7, study_uid="1.2.7.2"),
    )
    with database.read_connection() as conn:

        def found(**kw: Any) -> list[int]:
            return [r.id for r in find_entries(conn, AuditFilter(**kw), limit=100).entries]

        assert found(regional_pk=7, since=NOW - timedelta(days=1)) == [ids[3], ids[0]]
        assert found(study_uid="1.2.7.1") == [ids[2], ids[0]]
        assert found(action="query", outcome="deny") == [ids[1]]
        assert found(user="CT1") == []  # a bare name means a user
        assert found(user="node:CT1") == [ids[2]]
        assert len(found(user="bob")) == 1
        assert len(found(until=NOW - timedelta(days=100))) == 1
        seen: list[int] = []
        before = None
        while True:
            page = find_entries(conn, AuditFilter(), limit=2, before=before)
            seen += [r.id for r in page.entries]
            if page.next_before is None:
                break
            before = page.next_before
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) == 5


def _study(db: Database, uid: str, establishment_pk: int | None) -> None:
    with db.session() as session:
        conn = session.connection()
        patient = conn.execute(
            insert(Patient).values(patient_id=f"PID-SECRET-{uid}", patient_name="DOE^JOHN")
        ).inserted_primary_key[0]
        conn.execute(
            insert(Study).values(
                study_instance_uid=uid,
                patient_pk=patient,
                establishment_pk=establishment_pk,
                created_at=NOW,
                updated_at=NOW,
            )
        )


def test_api_scopes_readers_and_records_each_reading(secured_hub: Hub) -> None:
    secured_hub.cli("establishments", "add", "E1", "Hopital Un")
    admin = service_token(secured_hub, "auditor", "regional-admin")
    local = service_token(secured_hub, "localadmin", "establishment-admin", establishment="E1")
    doctor = service_token(secured_hub, "doctor", "radiologist", establishment="E1")
    db = index_of(secured_hub.data_dir)
    with db.reader() as session:
        e1_pk = session.execute(select(Establishment.id).where(Establishment.code == "E1")).scalar()
    _study(db, "1.2.9.1", e1_pk)
    _study(db, "1.2.9.2", None)
    ids = append(
        db,
        entry("view", study_uid="1.2.9.1", regional_pk=3),
        entry("view", study_uid="1.2.9.2", regional_pk=4),
        entry("retrieve", study_uid="1.2.9.1", regional_pk=3),
    )

    def get(token: str | None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{secured_hub.url}/api/audit", params=params, headers=headers, timeout=10)

    assert get(None).status_code == 401
    assert get(doctor).status_code == 403
    mine = get(local, action="view").json()
    assert [e["id"] for e in mine["entries"]] == [ids[0]]
    assert mine["entries"][0]["patient"] == "RP00000003"
    everything = get(admin, action="view").json()
    assert [e["id"] for e in everything["entries"]] == [ids[1], ids[0]]
    by_patient = get(admin, patient="RP00000003").json()
    assert [e["id"] for e in by_patient["entries"]] == [ids[2], ids[0]]
    first = get(admin, action="view", limit=1).json()
    second = get(admin, action="view", limit=1, before=first["next"]).json()
    assert [first["entries"][0]["id"], second["entries"][0]["id"]] == [ids[1], ids[0]]
    assert second["next"] is None
    # Every reading is in the trail, refused ones too (Audit Log Used).
    reads = get(admin, action="audit-read", limit=100).json()["entries"]
    assert {(e["actor"], e["outcome"]) for e in reads} >= {
        ("user:doctor", "deny"),
        ("user:localadmin", "allow"),
        ("user:auditor", "allow"),
    }
    assert get(admin, patient="RP99999999").json()["entries"] == []
    verified = httpx.get(
        f"{secured_hub.url}/api/audit/verify",
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert verified.json() == {"intact": True, "breaks": []}
    assert (
        httpx.get(
            f"{secured_hub.url}/api/audit/verify",
            headers={"Authorization": f"Bearer {local}"},
            timeout=10,
        ).status_code
        == 403
    )
    # The CLI lists with the same filters.
    listed = secured_hub.cli("audit", "list", "--patient", "RP00000003", "--json")
    assert '"RP00000003"' in listed.stdout and "DOE" not in listed.stdout
    # A DICOMweb query through the hub is recorded by it and exported as 110112 Query.
    qido = httpx.get(
        f"{secured_hub.url}/dicom-web/studies",
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert qido.status_code in (200, 204), qido.text
    out = secured_hub.data_dir.parent / "atna"
    secured_hub.cli("audit", "export", "--out", str(out), "--action", "query")
    queries = [etree.parse(str(p)) for p in sorted(out.glob("*-110112.xml"))]
    assert queries
    for doc in queries:
        assert SCHEMA_CHECK.validate(doc), SCHEMA_CHECK.error_log
    assert "user:auditor" in {
        p.get("UserID") for doc in queries for p in doc.findall("ActiveParticipant")
    }


# --- ATNA export -----------------------------------------------------------------------

EVERY_KIND = [
    entry("query", study_uid="", detail={"query": "(0010,0020)=*", "address": "10.1.2.3"}),
    entry("view", regional_pk=5, study_uid="1.2.5.1"),
    entry("view", regional_pk=5, study_uid="1.2.5.1", purpose="emergency", reason="AVP, coma"),
    entry("retrieve", regional_pk=5, study_uid="1.2.5.1", outcome="deny", rule="no-rule"),
    entry("store", actor_kind="node", actor_id="node:CT1", regional_pk=5, study_uid="1.2.5.2"),
    entry("export", regional_pk=5, study_uid="1.2.5.1"),
    entry("delete", actor_kind="system", actor_id="system:pacs-hub", study_uid="1.2.5.3"),
    entry("share", regional_pk=5, study_uid="1.2.5.1"),
    entry("consent", regional_pk=5),
    entry("login", regional_pk=None),
    entry("logout"),
    entry("audit-read"),
    entry("admin", outcome="failed"),
    entry("associate", actor_kind="node", actor_id="node:ROGUE", outcome="deny"),
]
EXPECTED_EVENTS = {
    "110112",
    "110103",
    "110113",
    "110104",
    "110106",
    "110105",
    "110114",
    "110101",
}


def test_export_of_every_event_validates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = Database(Settings(data_dir=data).index_url)
    _study(db, "1.2.5.1", None)
    append(db, *EVERY_KIND)
    out = tmp_path / "atna"
    result = cli(data, "export", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(out.glob("*.xml"))
    assert len(files) == len(EVERY_KIND) + 1  # the break-glass view is two messages
    events = set()
    for path in files:
        doc = etree.parse(str(path))
        assert SCHEMA_CHECK.validate(doc), (path.name, SCHEMA_CHECK.error_log)
        events.add(doc.find("EventIdentification/EventID").get("csd-code"))
        text = path.read_text()
        assert "DOE" not in text and "PID-SECRET" not in text  # never a name nor Patient ID
    assert events == EXPECTED_EVENTS
    accessed = etree.parse(str(next(out.glob("*-1-110103.xml"))))
    study = accessed.find("ParticipantObjectIdentification[@ParticipantObjectTypeCode='2']")
    assert study.get("ParticipantObjectTypeCodeRole") == "3"
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    patient = accessed.find("ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']")
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert patient.get("ParticipantObjectID") == "RP00000005^^^PACS_HUB_REGION"
    alert = etree.parse(str(next(out.glob("*-2-110113.xml"))))
    assert alert.find("EventIdentification/EventTypeCode").get("csd-code") == "110127"
    refused = etree.parse(str(next(p for p in files if "ROGUE" in p.read_text())))
    assert refused.find("EventIdentification/EventTypeCode").get("csd-code") == "110126"
    assert refused.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    denied = etree.parse(str(sorted(out.glob("*-1-110104.xml"))[0]))  # retrieve, then store
    assert denied.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    # Filters apply to the export too.
    only = tmp_path / "only"
    assert cli(data, "export", "--out", str(only), "--action", "delete").returncode == 0
    assert [p.name.split("-", 2)[2] for p in only.glob("*.xml")] == ["110105.xml"]


TEXT = st.text(max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    action=st.sampled_from(["query", "view", "retrieve", "store", "delete", "share", "x"]),
    actor=TEXT,
    reason=TEXT,
    study=TEXT,
    query=TEXT,
    outcome=st.sampled_from(["allow", "deny", "ok", "failed", ""]),
)
def test_any_entry_text_gives_valid_messages(
    action: str, actor: str, reason: str, study: str, query: str, outcome: str
) -> None:
    rec = AuditRecord(
        id=1,
        at=NOW,
        actor_kind="user",
        actor_id=actor,
        action=action,
        purpose="care",
        outcome=outcome,
        rule="r",
        regional_pk=1,
        study_uid=study,
        reason=reason,
        detail={"query": query, "address": actor},
    )
    for msg in messages(rec, AuditSource("PACS_HUB", "REGION", "127.0.0.1")):
        assert SCHEMA_CHECK.validate(etree.fromstring(msg.xml)), SCHEMA_CHECK.error_log


# --- syslog over TLS -------------------------------------------------------------------


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit repository")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


SYSLOG_HEADER = re.compile(
    rb"<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) \[meta sequenceId=\"(\d+)\"\] \xef\xbb\xbf"
)


@dataclass
class Received:
    """One RFC 5424 message as the repository parsed it."""

    pri: int
    app_name: str
    msgid: str
    sequence_id: int
    xml: bytes


@dataclass
class Receiver:
    """A TLS syslog receiver (RFC 5425, octet counting) on a fixed loopback port."""

    port: int
    cert: Path
    key: Path
    messages: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _server: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _conns: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        self._server = server
        thread = threading.Thread(target=self._accept, args=(server, context), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, server: socket.socket, context: ssl.SSLContext) -> None:
        while True:
            try:
                raw, _ = server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw, context), daemon=True)
            thread.start()

    def _serve(self, raw: socket.socket, context: ssl.SSLContext) -> None:
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        self._conns.append(conn)
        buffer = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                buffer = self._frames(buffer)
            if buffer:
                self.errors.append(f"{len(buffer)} bytes left unframed")
            conn.unwrap()  # answer the sender's close_notify: everything was read
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def _frames(self, buffer: bytes) -> bytes:
        while b" " in buffer:
            length, rest = buffer.split(b" ", 1)
            if not length.isdigit():
                self.errors.append(f"bad MSG-LEN {length[:20]!r}")
                return b""
            if len(rest) < int(length):
                return buffer
            self._parse(rest[: int(length)])
            buffer = rest[int(length) :]
        return buffer

    def _parse(self, msg: bytes) -> None:
        match = SYSLOG_HEADER.match(msg)
        if match is None:
            self.errors.append(f"not RFC 5424: {msg[:80]!r}")
            return
        with self._lock:
            self.messages.append(
                Received(
                    int(match[1]),
                    match[4].decode(),
                    match[6].decode(),
                    int(match[7]),
                    msg[match.end() :],
                )
            )

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self._server.close()
            self._server = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def entry_ids(self) -> set[int]:
        with self._lock:
            return {m.sequence_id for m in self.messages}


def _all_ids(db: Database) -> set[int]:
    with db.read_connection() as conn:
        return set(conn.execute(select(AuditEvent.id)).scalars())


def test_syslog_delivers_every_entry_after_outages(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    receiver = Receiver(port, cert, key)
    hub = start_hub(
        tmp_path / "data",
        PACS_HUB_AUTH_REQUIRED="true",
        PACS_HUB_AUDIT_SYSLOG_URL=f"tls://127.0.0.1:{port}",
        PACS_HUB_AUDIT_SYSLOG_CA=str(ca),
    )
    log = tmp_path / f"hub-{hub.http_port}.log"
    try:
        db = index_of(hub.data_dir)
        admin = {"Authorization": f"Bearer {service_token(hub, 'auditor', 'regional-admin')}"}
        assert httpx.get(f"{hub.url}/api/audit", headers=admin, timeout=10).status_code == 200
        append(db, *EVERY_KIND[:5])
        # The repository is down: the hub says so once and keeps the entries.
        wait_until(lambda: "unreachable" in log.read_text(), what="the hub to find it down")
        assert syslog.read_cursor(hub.data_dir) == 0
        receiver.start()
        wait_until(lambda: _all_ids(db) <= receiver.entry_ids(), what="first delivery")
        receiver.stop()  # down again, while more entries arrive
        append(db, *EVERY_KIND[5:])
        assert httpx.get(f"{hub.url}/api/audit", headers=admin, timeout=10).status_code == 200
        wait_until(
            lambda: log.read_text().count("unreachable") >= 2,
            what="the second outage to be noticed",
        )
        receiver.start()
        wait_until(lambda: _all_ids(db) <= receiver.entry_ids(), what="delivery after outage")
        # The cursor is saved once the receiver has the entries: wait for it too.
        wait_until(
            lambda: syslog.read_cursor(hub.data_dir) == max(_all_ids(db)),
            what="the cursor to reach the last entry",
        )
    finally:
        hub.stop()
        receiver.stop()
    assert receiver.errors == []
    for msg in receiver.messages:
        assert msg.app_name == "pacs-hub"
        assert msg.pri in (84, 85)  # facility 10, notice or warning
        doc = etree.fromstring(msg.xml)
        assert SCHEMA_CHECK.validate(doc), SCHEMA_CHECK.error_log
        assert doc.find("EventIdentification/EventID").get("csd-code") == msg.msgid
    denied = [m for m in receiver.messages if b'EventOutcomeIndicator="4"' in m.xml]
    assert denied and all(m.pri == 84 for m in denied)


def test_shipping_twice_sends_nothing_new(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    receiver = Receiver(port, cert, key)
    receiver.start()
    try:
        data = tmp_path / "data"
        data.mkdir()
        settings_ = Settings(
            data_dir=data, audit_syslog_url=f"tls://127.0.0.1:{port}", audit_syslog_ca=str(ca)
        )
        db = Database(settings_.index_url)
        ids = append(db, entry(), entry("query"))
        repo = syslog.Repository.of(settings_)
        assert repo is not None
        assert syslog.ship_once(settings_, db, repo) == 2
        assert syslog.ship_once(settings_, db, repo) == 0
        wait_until(lambda: receiver.entry_ids() == set(ids), what="two entries")
        assert len(receiver.messages) == 2
        # A repository whose certificate is not from the configured CA is refused.
        other = Settings(data_dir=data, audit_syslog_url=f"tls://127.0.0.1:{port}")
        append(db, entry())
        with pytest.raises(ssl.SSLError):
            syslog.ship_once(other, db, syslog.Repository.of(other))  # type: ignore[arg-type]
        assert syslog.read_cursor(data) == ids[-1]
    finally:
        receiver.stop()


def test_a_bad_repository_url_is_explained() -> None:
    with pytest.raises(syslog.SyslogUrlError, match="tls://host:port"):
        syslog.Repository.of(Settings(audit_syslog_url="udp://127.0.0.1:514"))


def test_query_detail_is_carried_base64() -> None:
    rec = AuditRecord(
        1,
        NOW,
        "node",
        "node:CT1",
        "query",
        "care",
        "allow",
        "r",
        None,
        "",
        "",
        detail={"query": "(0010,0020)=<x>"},
    )
    msg = messages(rec, AuditSource("PACS_HUB", "REGION", "h"))[0]
    query = etree.fromstring(msg.xml).find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert query is not None
    assert base64.b64decode(query.text or "") == b"(0010,0020)=<x>"
