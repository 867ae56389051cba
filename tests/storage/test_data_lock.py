"""One running hub per data folder (pacs_hub.storage.data_lock): flock(2) locks held
by the hub process and shared by its processes until the last one exits."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from pacs_hub.storage import data_lock
from pacs_hub.storage.data_lock import DataDirInUse

SPAWN = multiprocessing.get_context("spawn")  # as the hub starts its processes


def _hub(data_dir: Path, claimed: Event, child_pid: Synchronized[int] | None) -> None:
    """A hub process: claims the folder, maybe starts a process sharing it, waits."""
    data_lock.claim(data_dir, wait=0)
    if child_pid is not None:
        shared = SPAWN.Event()
        child = SPAWN.Process(target=_sharing, args=(data_dir, shared))
        child.start()
        assert shared.wait(60)
        child_pid.value = child.pid or 0
    claimed.set()
    signal.pause()


def _sharing(data_dir: Path, shared: Event) -> None:
    data_lock.share(data_dir)
    shared.set()
    signal.pause()


def _start_hub(
    data_dir: Path, child_pid: Synchronized[int] | None = None
) -> multiprocessing.process.BaseProcess:
    claimed = SPAWN.Event()
    hub = SPAWN.Process(target=_hub, args=(data_dir, claimed, child_pid))
    hub.start()
    assert claimed.wait(60)
    return hub


def test_a_second_hub_on_a_running_hubs_folder_is_refused(tmp_path: Path) -> None:
    first = _start_hub(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(DataDirInUse, match=f"another running hub \\(pid {first.pid}\\)"):
            data_lock.claim(tmp_path, wait=0.5)
        assert time.monotonic() - started >= 0.5  # it waited first
    finally:
        first.kill()
        first.join()
    data_lock.claim(tmp_path, wait=5)  # free once that hub is gone
    assert (tmp_path / data_lock.LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_the_folder_stays_taken_until_the_last_process_of_a_killed_hub_exits(
    tmp_path: Path,
) -> None:
    child_pid = SPAWN.Value("i", 0)
    first = _start_hub(tmp_path, child_pid)
    first.kill()  # its process sharing the folder lives on
    first.join()
    try:
        with pytest.raises(DataDirInUse, match="its last processes still run"):
            data_lock.claim(tmp_path, wait=0.3)
    finally:
        os.kill(child_pid.value, signal.SIGKILL)
    data_lock.claim(tmp_path, wait=10)  # the last one gone: free
