"""Real peers started by the tests (and the benchmark) on loopback: Debian's Orthanc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from orthanc_api_client import OrthancApiClient

from tests.conftest import free_port, wait_until

ORTHANC = "/usr/sbin/Orthanc"
LOOPBACK = "127.0.0.1"


@dataclass
class OrthancPeer:
    """A running Orthanc with its own configuration, storage and SQLite index."""

    process: subprocess.Popen[bytes]
    aet: str
    dicom_port: int
    http_port: int
    workdir: Path
    api: OrthancApiClient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.api = OrthancApiClient(self.url)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def log(self) -> Path:
        return self.workdir / "orthanc.log"

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 30 s; return Orthanc's exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _alive(url: str) -> bool:
    try:
        return httpx.get(f"{url}/system", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def orthanc_config(
    workdir: Path,
    aet: str,
    dicom_port: int,
    http_port: int,
    modalities: Mapping[str, Sequence[str | int]],
    extra_config: Mapping[str, Any],
) -> dict[str, Any]:
    """Orthanc's JSON configuration: storage and index in ``workdir``, no plugins.

    Orthanc 1.10 has no bind-address option (``Orthanc --config=FILE`` writes every
    option it knows; none sets the listening address), so both ports listen on every
    interface. ``RemoteAccessAllowed: false``
    makes the HTTP server refuse any client that is not on loopback; the DICOM port
    accepts anyone (``DicomAlwaysAllow*``), which is what a test peer needs.
    """
    return {
        "Name": aet,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomCheckModalityHost": False,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "Plugins": [],
        **extra_config,
    }


def start_orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    dicom_port: int | None = None,
    http_port: int | None = None,
    modalities: Mapping[str, Sequence[str | int]] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> OrthancPeer:
    """Start Debian's Orthanc and wait until ``GET /system`` answers.

    ``modalities`` maps Orthanc's name for a peer to ``(AET, host, port)``;
    ``extra_config`` overrides or adds configuration keys (``"Plugins": [...]`` to
    load plugins, none are by default). Free loopback ports are picked when none
    are given. TCP_NODELAY=1 is set in its environment: Orthanc's DICOM layer
    (dcmtk) reads it; without it every DIMSE message waits ~40 ms on Nagle's
    algorithm (perf-baseline §1.3).
    """
    if not Path(ORTHANC).exists():
        raise RuntimeError(f"{ORTHANC} is missing: run 'make test' (installs Debian's orthanc)")
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config = orthanc_config(
        workdir, aet, dicom_port, http_port, modalities or {}, extra_config or {}
    )
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    env = {**os.environ, "TCP_NODELAY": "1"}
    with (workdir / "orthanc.log").open("wb") as log:
        process = subprocess.Popen([ORTHANC, str(path)], env=env, stdout=log, stderr=log)
    peer = OrthancPeer(process, aet, dicom_port, http_port, workdir)
    try:
        wait_until(lambda: _alive(peer.url) or process.poll() is not None, timeout, what="Orthanc")
    except AssertionError:
        peer.stop()
        raise
    if process.poll() is not None:
        raise RuntimeError(f"Orthanc exited with {process.returncode}; see {peer.log}")
    return peer
