"""Shared fixtures: a real hub process on loopback, dcmtk binaries, the shared test data."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pacs_hub.config import Settings
from pacs_hub.gateway import pdu_reader, reactor
from pacs_hub.storage.database import Database
from pacs_hub.web.app import create_app

# The tests' own pynetdicom clients and storage SCPs run the hub's reactors: pynetdicom's
# hand-over between a send_* caller and its reactor can give the caller's response to
# the reactor (pacs_hub/gateway/reactor.py), which under load lost a C-STORE response
# of a test client now and then. They read PDUs as the hub does, so that path is
# exercised by every test peer too.
reactor.install()
pdu_reader.install()

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PACS_HUB_TEST_DATA", ROOT.parent / "shared" / "data" / "dicom"))
DCMTK = Path("/usr/bin")  # dcmtk by path: pynetdicom installs console scripts of the same names
HUB_AE = "PACS_HUB"


_GIVEN: set[int] = set()


@contextlib.contextmanager
def app_client(settings: Settings) -> Iterator[TestClient]:
    """The hub's FastAPI application in-process (no server), on a migrated index."""
    database = Database(settings.index_url, run_migrations=True)
    try:
        with TestClient(create_app(settings, database)) as client:
            yield client
    finally:
        database.dispose()


def free_port() -> int:
    """A TCP port free on loopback right now, never one this process was given before
    (the kernel may hand a just-closed port out again: two servers would collide)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk binary (never pynetdicom's look-alike scripts)."""
    path = DCMTK / tool
    if not path.exists():
        raise RuntimeError(f"dcmtk's {tool} is missing: run 'make test' (installs dcmtk)")
    return str(path)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


@dataclass
class Hub:
    """A running ``pacs-hub serve`` process."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    dicom_port: int
    http_port: int
    env: dict[str, str]
    ae_title: str = HUB_AE

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``pacs-hub ARGS`` against this hub's data folder."""
        return subprocess.run(
            [sys.executable, "-m", "pacs_hub.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_hub(data_dir: Path, processes: int = 1, **extra_env: str) -> Hub:
    """Start a hub on free loopback ports and wait until /health says ready."""
    dicom_port, http_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        PACS_HUB_DATA_DIR=str(data_dir),
        PACS_HUB_AE_TITLE=HUB_AE,
        PACS_HUB_DICOM_PORT=str(dicom_port),
        PACS_HUB_HTTP_PORT=str(http_port),
        PACS_HUB_HOST="127.0.0.1",
        PACS_HUB_GATEWAY_PROCESSES=str(processes),
        PACS_HUB_HTTP_PROCESSES="1",  # tests/test_http_processes.py starts hubs with more
        # Tests send from ad-hoc AE titles; the refusal of unknown callers has its own tests.
        PACS_HUB_UNKNOWN_CALLERS="accept",
        # Likewise the access policy: tests of other features run without it; the trust
        # tests start hubs with PACS_HUB_AUTH_REQUIRED=true.
        PACS_HUB_AUTH_REQUIRED="false",
    )
    env.update(extra_env)  # given ports win over the free ones
    dicom_port, http_port = int(env["PACS_HUB_DICOM_PORT"]), int(env["PACS_HUB_HTTP_PORT"])
    log = (data_dir.parent / f"hub-{http_port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pacs_hub.cli", "serve"], env=env, stdout=log, stderr=log
    )
    hub = Hub(process, data_dir, dicom_port, http_port, env)
    try:
        # Generous: a loaded 2-core CI machine can take long to start the gateways.
        wait_until(
            lambda: _healthy(hub.url) or process.poll() is not None,
            timeout=120,
            what="hub health",
        )
    except AssertionError:
        hub.stop()
        raise
    if process.poll() is not None:
        raise RuntimeError(f"hub exited with {process.returncode}; see {log.name}")
    return hub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A fresh hub (one gateway process) on an empty data folder."""
    running = start_hub(tmp_path / "data")
    yield running
    running.stop()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data/dicom (real DICOM files)."""
    if not DATA.is_dir():
        raise RuntimeError(f"test data not found at {DATA}")
    return DATA


def have(binary: str) -> bool:
    """True when ``binary`` is on PATH."""
    return shutil.which(binary) is not None
