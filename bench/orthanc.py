"""Starting Orthanc for the benchmark.

Uses ``tests.peers.start_orthanc`` (the project's Orthanc test peer); a minimal
launcher with the same shape is kept for checkouts that do not have it yet.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import dcmtk_env, wait_for

ORTHANC = "/usr/sbin/Orthanc"


@dataclass
class MinimalOrthanc:
    """A running Orthanc (Debian package, default SQLite index)."""

    process: subprocess.Popen[bytes]
    url: str

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
        with urllib.request.urlopen(f"{url}/system", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_minimal(
    workdir: Path,
    *,
    aet: str,
    dicom_port: int,
    http_port: int,
    modalities: dict[str, list[Any]],
    extra_config: dict[str, Any],
) -> MinimalOrthanc:
    config = {
        "Name": aet,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": modalities,
        "Plugins": [],
        **extra_config,
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log = (workdir / "orthanc.log").open("wb")
    process = subprocess.Popen([ORTHANC, str(path)], env=dcmtk_env(), stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http_port}"
    wait_for(lambda: _alive(url) or process.poll() is not None, 60, "Orthanc")
    if process.poll() is not None:
        raise RuntimeError(f"Orthanc exited; see {workdir / 'orthanc.log'}")
    return MinimalOrthanc(process, url)


def start_orthanc(workdir: Path, **kwargs: Any) -> Any:
    """``tests.peers.start_orthanc`` when present, else the minimal launcher."""
    try:
        from tests.peers import (  # type: ignore[import-not-found,unused-ignore]
            start_orthanc as peers_start,
        )
    except ImportError:
        return start_minimal(workdir, **kwargs)
    return peers_start(workdir, **kwargs)


def uses_test_peer() -> bool:
    try:
        import tests.peers  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True
