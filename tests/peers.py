"""Real peers started by the tests (and the benchmark) on loopback: Debian's Orthanc."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from orthanc_api_client import OrthancApiClient

from tests.conftest import free_port, wait_until

ORTHANC = "/usr/sbin/Orthanc"


@dataclass
class OrthancPeer:
    """A running Orthanc with its own configuration, storage and SQLite index."""

    process: subprocess.Popen[bytes]
    aet: str
    dicom_port: int
    http_port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def api(self) -> OrthancApiClient:
        return OrthancApiClient(self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _alive(url: str) -> bool:
    try:
        return httpx.get(f"{url}/system", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    dicom_port: int | None = None,
    http_port: int | None = None,
    modalities: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> OrthancPeer:
    """Start Orthanc on loopback; ``modalities`` maps a name to ``[AET, host, port]``.

    TCP_NODELAY=1 is set in its environment (Orthanc reads it; without it every DIMSE
    message waits ~40 ms on Nagle's algorithm).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config = {
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
        "DicomModalities": modalities or {},
        "Plugins": [],
        **(extra_config or {}),
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    env = {**os.environ, "TCP_NODELAY": "1"}
    log = (workdir / "orthanc.log").open("wb")
    process = subprocess.Popen([ORTHANC, str(path)], env=env, stdout=log, stderr=log)
    peer = OrthancPeer(process, aet, dicom_port, http_port, workdir)
    wait_until(lambda: _alive(peer.url) or process.poll() is not None, 60, what="Orthanc")
    if process.poll() is not None:
        raise RuntimeError(f"Orthanc exited with {process.returncode}; see {workdir}/orthanc.log")
    return peer
