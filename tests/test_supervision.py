"""The hub keeps its processes and its ports: a dead gateway process is replaced, a
process that keeps dying is started again with back-off, a second hub on the same
port refuses to start, a hub restarted right after a kill -9 takes its ports back."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs_hub import supervisor
from pacs_hub.storage.blobs import TEMP_SUFFIX
from pacs_hub.supervisor import Supervisor, backoff
from tests.conftest import Hub, free_port, start_hub, wait_until
from tests.procs import children, kill_one_and_wait_for_another, listening_children

FORK = multiprocessing.get_context("fork")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _exiting(code: int) -> multiprocessing.process.BaseProcess:
    process = FORK.Process(target=os._exit, args=(code,))
    process.start()
    process.join()
    return process


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert [backoff(n) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_a_process_that_keeps_dying_is_started_again_later_and_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    starts: list[multiprocessing.process.BaseProcess] = []

    def start() -> multiprocessing.process.BaseProcess:
        starts.append(_exiting(3))
        return starts[-1]

    watch = Supervisor(clock)
    watch.add("HTTP", start)
    clock.now += 100  # ran long enough: started again at once
    with caplog.at_level(logging.ERROR, logger=supervisor.__name__):
        watch.check()
    assert len(starts) == 2
    assert f"HTTP process {starts[0].pid} exited with 3 after 100 s: starting another now" in (
        caplog.text
    )
    waits = []
    for _ in range(4):  # each dies at once: 1, 2, 4, 8 s before the next start
        clock.now += 0.5
        watch.check()
        due = len(starts)
        waited = 0.0
        while len(starts) == due:
            clock.now += 0.5
            waited += 0.5
            watch.check()
        waits.append(waited)
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert "starting another in 8 s" in caplog.text
    clock.now += supervisor.STABLE_SECONDS  # the last one "ran" long: at once again
    watch.check()
    assert len(starts) == 7
    assert watch.processes() == [starts[-1]]


def test_a_running_process_is_left_alone() -> None:
    clock = Clock()
    process = FORK.Process(target=signal.pause)
    watch = Supervisor(clock)
    watch.add("gateway", lambda: (process.start(), process)[1])
    try:
        clock.now += 500
        watch.check()
        assert watch.processes() == [process] and process.is_alive()
    finally:
        process.kill()
        process.join()


# --- a running hub ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(tmp_path_factory.mktemp("supervised") / "data", processes=2)
    try:
        yield running
    finally:
        running.stop()


def _gateways(hub: Hub) -> list[int]:
    return listening_children(hub.process.pid, hub.dicom_port)


def _health(hub: Hub) -> dict[str, object]:
    answer = httpx.get(f"{hub.url}/health", timeout=30).json()
    assert isinstance(answer, dict)
    return answer


def _answers_ok(hub: Hub) -> bool:
    try:
        return _health(hub)["status"] == "ok"
    except httpx.TransportError:  # not listening yet
        return False


def _echo(port: int) -> int:
    ae = AE(ae_title="SUPERVISION")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS_HUB")
    assert assoc.is_established
    status = assoc.send_c_echo().Status  # type: ignore[attr-defined]
    assoc.release()
    return int(status)


def test_a_dead_gateway_process_is_replaced(hub: Hub) -> None:
    wait_until(lambda: len(_gateways(hub)) == 2, timeout=60, what="two gateways")
    killed = kill_one_and_wait_for_another(hub.process.pid, hub.dicom_port, "gateway")
    wait_until(
        lambda: _health(hub)["gateway_processes"] == {"alive": 2, "expected": 2},
        timeout=60,
        what="/health counting the new gateway",
    )
    assert _health(hub)["status"] == "ok"
    for _ in range(4):  # whichever gateway takes it
        assert _echo(hub.dicom_port) == 0x0000
    log = (hub.data_dir.parent / f"hub-{hub.http_port}.log").read_text()
    assert f"gateway process {killed} exited with -9 after" in log


def _refused_beside(hub: Hub, **env: str) -> str:
    """``pacs-hub serve`` with ``hub``'s settings but ``env``: it must exit with status 2;
    what it said, on one line."""
    second = subprocess.run(
        [sys.executable, "-m", "pacs_hub.cli", "serve"],
        env=dict(hub.env, PACS_HUB_PORT_RELEASE_WAIT="1", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    return " ".join((second.stdout + second.stderr).split())


def test_a_second_hub_on_the_same_port_refuses_to_start(hub: Hub, tmp_path: Path) -> None:
    said = _refused_beside(hub, PACS_HUB_DATA_DIR=str(tmp_path / "other"))
    assert f"cannot listen on DICOM port 127.0.0.1:{hub.dicom_port}: another process" in said
    assert not (tmp_path / "other").exists()  # it stopped before touching any archive
    assert _health(hub)["status"] == "ok"  # the first hub serves on
    assert _echo(hub.dicom_port) == 0x0000


def test_a_second_hub_on_the_same_data_folder_refuses_to_start(hub: Hub) -> None:
    """Even on other ports: its start would delete the running hub's writes in progress."""
    in_progress = hub.data_dir / "tmp" / f"in-progress{TEMP_SUFFIX}"
    in_progress.write_bytes(b"a blob being written")
    try:
        said = _refused_beside(
            hub, PACS_HUB_DICOM_PORT=str(free_port()), PACS_HUB_HTTP_PORT=str(free_port())
        )
        assert f"data folder {hub.data_dir} is used by another running hub (pid " in said
        assert in_progress.read_bytes() == b"a blob being written"  # not cleaned away
        assert _health(hub)["status"] == "ok"
    finally:
        in_progress.unlink()


def test_a_hub_killed_hard_and_restarted_at_once_takes_its_ports_back(tmp_path: Path) -> None:
    first = start_hub(tmp_path / "data", processes=2)
    old = children(first.process.pid)
    first.process.kill()  # the hub alone: its processes get SIGTERM and stop meanwhile
    first.process.wait()
    ports = {
        "PACS_HUB_DICOM_PORT": str(first.dicom_port),
        "PACS_HUB_HTTP_PORT": str(first.http_port),
    }
    again = start_hub(tmp_path / "data", processes=2, **ports)
    try:
        assert (again.dicom_port, again.http_port) == (first.dicom_port, first.http_port)
        wait_until(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in old),
            timeout=60,
            what="the old hub's processes to exit",
        )
        # start_hub's /health may have been answered by the old hub's HTTP processes:
        # the new hub listens once they have let go of the ports
        wait_until(lambda: _answers_ok(again), timeout=60, what="the new hub")
        assert _health(again)["gateway_processes"] == {"alive": 2, "expected": 2}
        assert len(_gateways(again)) == 2
        assert _echo(again.dicom_port) == 0x0000
    finally:
        again.stop()
