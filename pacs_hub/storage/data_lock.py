"""One running hub per data folder.

``pacs-hub serve`` cleans the data folder of temp files left by a crash and appends to
pack files as it starts; a second hub on the same folder (other ports, started by
mistake) would delete the first one's writes in progress and run every background
task twice. Two lock files (``flock(2)``) keep the folder to one hub:

* ``hub.lock``, held exclusively by the hub process while it runs (it also holds its
  pid, for the message);
* ``hub-processes.lock``, held shared by each of its gateway and HTTP processes until
  it exits, so that after a ``kill -9`` of the hub the folder stays taken until its
  last process has exited.

A starting hub takes the first and checks the second is free (an exclusive lock taken
and dropped), waiting for both (``PACS_HUB_PORT_RELEASE_WAIT``, as for the ports)
before it refuses to start. The other ``pacs-hub`` commands (import, nodes, audit,
...) and Celery workers take neither: they work beside a running hub through the
index.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from pacs_hub.release_wait import until_released

LOCK_NAME = "hub.lock"
PROCESSES_LOCK_NAME = "hub-processes.lock"
_held: list[int] = []  # this process's lock descriptors, kept open until it exits


class DataDirUnusable(Exception):
    """The data folder cannot be taken for this hub."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DataDirInUse(DataDirUnusable):
    """Another running hub's processes use this data folder."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        self.data_dir, self.holder = data_dir, holder
        super().__init__(
            f"data folder {data_dir} is used by another running hub{holder};"
            " stop it first, or give this one a folder of its own (PACS_HUB_DATA_DIR)"
        )


def _open(data_dir: Path, name: str) -> int:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        return os.open(data_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataDirUnusable(f"cannot use data folder {data_dir}: {reason}") from exc


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (pid {pid})"
    return ""


def _locked(fd: int) -> bool | None:
    """An exclusive lock on ``fd`` taken now (True), or None while another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    return True


def claim(data_dir: Path, wait: float) -> None:
    """Take the data folder for this hub process, waiting up to ``wait`` seconds while
    another hub's processes hold it (:func:`~pacs_hub.release_wait.until_released`);
    :class:`DataDirInUse` if they still do then."""
    deadline = time.monotonic() + wait
    what = f"data folder {data_dir}"
    hub = _open(data_dir, LOCK_NAME)
    if not until_released(lambda: _locked(hub), wait, what):
        holder = _holder(hub)
        os.close(hub)
        raise DataDirInUse(data_dir, holder)
    processes = _open(data_dir, PROCESSES_LOCK_NAME)
    try:
        left = max(0.0, deadline - time.monotonic())
        if not until_released(lambda: _locked(processes), left, what):
            os.close(hub)
            raise DataDirInUse(data_dir, " (its last processes still run)")
    finally:
        os.close(processes)  # dropped: this hub's processes share it from now on
    os.ftruncate(hub, 0)
    os.pwrite(hub, f"{os.getpid()}\n".encode(), 0)
    _held.append(hub)


def share(data_dir: Path) -> None:
    """Hold the data folder's processes lock (shared) in a gateway or HTTP process of
    the hub that claimed the folder, until this process exits."""
    fd = _open(data_dir, PROCESSES_LOCK_NAME)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a starting hub checks it
    _held.append(fd)
