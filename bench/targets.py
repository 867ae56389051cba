"""The systems under test: a fresh PACS Hub, a fresh Orthanc, a dcmtk storescp.

Each target is started on an empty work folder, counts what it holds, and stops;
the benchmark makes a new one for every timed ingest run. The DICOMweb section
restarts the C-FIND target on the folder it filled (:func:`restart_target`), Orthanc
then with its DICOMweb plugin loaded (Debian ``orthanc-dicomweb``, plugin defaults).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.orthanc import start_orthanc
from bench.procs import LOOPBACK, StoreScp, free_port, wait_for, wait_quiet

HUB_AE = "PACS_HUB"
ORTHANC_AE = "ORTHANC"
STORESCP_AE = "STORESCP"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class Target(Protocol):
    """What the benchmark needs from a system under test."""

    name: str
    ae_title: str
    dicom_port: int

    def count(self) -> int: ...

    def server_pids(self) -> list[int]: ...

    def stop(self) -> None: ...


class WebTarget(Target, Protocol):
    """A target that serves DICOMweb (PS3.18) under ``dicomweb_url``."""

    @property
    def dicomweb_url(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Destination:
    """A C-MOVE destination both archives must know."""

    ae_title: str
    port: int


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


@dataclass
class HubTarget:
    """``pacs-hub serve`` on free loopback ports (its default settings otherwise)."""

    workdir: Path
    processes: int = 0
    name: str = "hub"
    ae_title: str = HUB_AE
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def dicomweb_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/dicom-web"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PACS_HUB_DATA_DIR": str(self.data_dir),
            "PACS_HUB_AE_TITLE": self.ae_title,
            "PACS_HUB_DICOM_PORT": str(self.dicom_port),
            "PACS_HUB_HTTP_PORT": str(self.http_port),
            "PACS_HUB_HOST": LOOPBACK,
            "PACS_HUB_GATEWAY_PROCESSES": str(self.processes),
            # The benchmark's senders are ad-hoc AE titles, not registered nodes.
            "PACS_HUB_UNKNOWN_CALLERS": "accept",
            # Measured: the archive paths as Orthanc runs them (no token, no policy
            # lookups), and no background prefetch C-FINDs to the move destinations.
            "PACS_HUB_AUTH_REQUIRED": "false",
            "PACS_HUB_PREFETCH_ENABLED": "false",
        }

    def cli(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "pacs_hub.cli", *args],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self, destinations: list[Destination]) -> HubTarget:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for dest in destinations:
            self.cli(
                "nodes", "add", dest.ae_title, LOOPBACK, str(dest.port), "--role", "destination"
            )
        log = (self.workdir / "hub.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pacs_hub.cli", "serve"], env=self.env(), stdout=log, stderr=log
        )
        url = f"http://{LOOPBACK}:{self.http_port}/health"
        wait_for(lambda: _http_ok(url) or self.process.poll() is not None, 60, "hub health")  # type: ignore[union-attr]
        if self.process.poll() is not None:
            raise RuntimeError(f"hub exited; see {self.workdir / 'hub.log'}")
        wait_quiet(self.server_pids())  # gateways and job worker done starting
        return self

    def count(self) -> int:
        uri = f"file:{self.data_dir / 'index.sqlite3'}?mode=ro"
        with sqlite3.connect(uri, uri=True) as db:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])

    def server_pids(self) -> list[int]:
        assert self.process is not None
        return [self.process.pid, *_children(self.process.pid)]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class OrthancTarget:
    """Debian's Orthanc with its default SQLite index (see :mod:`bench.orthanc`);
    ``dicomweb``: with the DICOMweb plugin at ``/dicom-web/`` (its other settings default)."""

    workdir: Path
    dicomweb: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """More configuration keys (``{"StorageCompression": True}``)."""
    name: str = "orthanc"
    ae_title: str = ORTHANC_AE
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    peer: Any = None

    def start(self, destinations: list[Destination]) -> OrthancTarget:
        os.environ.update(TCP_NODELAY="1")  # inherited by Orthanc (dcmtk network layer)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.peer = start_orthanc(
            self.workdir,
            aet=self.ae_title,
            dicom_port=self.dicom_port,
            http_port=self.http_port,
            modalities={d.ae_title: [d.ae_title, LOOPBACK, d.port] for d in destinations},
            extra_config={
                "DicomAlwaysAllowStore": True,
                "DicomAlwaysAllowFind": True,
                "DicomAlwaysAllowMove": True,
                "DicomAlwaysAllowGet": True,
                "DicomCheckModalityHost": False,
                **(self.web_config() if self.dicomweb else {}),
                **self.extra,
            },
        )
        wait_quiet(self.server_pids())
        return self

    @staticmethod
    def web_config() -> dict[str, Any]:
        if not Path(ORTHANC_DICOMWEB_PLUGIN).exists():
            missing = f"{ORTHANC_DICOMWEB_PLUGIN} is missing"
            raise RuntimeError(f"{missing} (apt-get install orthanc-dicomweb)")
        return {
            "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }

    @property
    def dicomweb_url(self) -> str:
        return f"{self.peer.url}/dicom-web"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.peer.url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def count(self) -> int:
        return int(self._get("/statistics")["CountInstances"])

    def server_pids(self) -> list[int]:
        process = getattr(self.peer, "process", None)
        return [process.pid] if process is not None else []

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()


@dataclass
class StoreScpTarget:
    """dcmtk storescp writing files (``+B``): the C++ receive-and-write ceiling, no index."""

    workdir: Path
    name: str = "storescp"
    ae_title: str = STORESCP_AE
    dicom_port: int = 0
    scp: StoreScp | None = None

    def start(self, destinations: list[Destination]) -> StoreScpTarget:
        self.scp = StoreScp(self.workdir, self.ae_title)
        self.dicom_port = self.scp.port
        return self

    def count(self) -> int:
        assert self.scp is not None
        return self.scp.count()

    def server_pids(self) -> list[int]:
        return [self.scp.pid] if self.scp else []

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop()


def start_target(kind: str, workdir: Path, hub_processes: int, dests: list[Destination]) -> Target:
    """A fresh target of ``kind`` on an empty ``workdir``."""
    shutil.rmtree(workdir, ignore_errors=True)
    if kind == "hub":
        return HubTarget(workdir, processes=hub_processes).start(dests)
    if kind == "orthanc":
        return OrthancTarget(workdir).start(dests)
    return StoreScpTarget(workdir).start(dests)


def start_web_target(kind: str, workdir: Path, hub_processes: int, *, fresh: bool) -> WebTarget:
    """The hub, or Orthanc with its DICOMweb plugin, on ``workdir``: emptied first when
    ``fresh``, else restarted on what a previous target of ``kind`` stored there."""
    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    if kind == "hub":
        return HubTarget(workdir, processes=hub_processes).start([])
    if kind == "orthanc":
        return OrthancTarget(workdir, dicomweb=True).start([])
    raise ValueError(f"{kind} serves no DICOMweb")


def keep_logs(workdir: Path, into: Path, label: str) -> Path:
    """Copy the server logs (``*.log``) of ``workdir`` to ``into/label`` before it is deleted."""
    dest = into / label
    dest.mkdir(parents=True, exist_ok=True)
    for path in workdir.glob("*.log"):
        shutil.copy2(path, dest / path.name)
    return dest
