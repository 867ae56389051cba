"""The hub's processes and sockets as Linux shows them (/proc): which child of a hub
holds which listening socket or connection."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.conftest import wait_until

ESTABLISHED, LISTEN = "01", "0A"


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def tcp_sockets(port: int) -> list[tuple[str, int, str]]:
    """(state, remote port, inode) of the IPv4 TCP sockets on local ``port``."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if int(local.split(":")[1], 16) == port:
            found.append((state, int(remote.split(":")[1], 16), inode))
    return found


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds (empty once it is gone)."""
    held = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return held
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[8:-1])
    return held


def listening_children(pid: int, port: int) -> list[int]:
    """The children of ``pid`` that hold the listening socket of ``port``."""
    listening = {inode for state, _, inode in tcp_sockets(port) if state == LISTEN}
    return sorted(p for p in children(pid) if socket_inodes(p) & listening)


def kill_one_and_wait_for_another(pid: int, port: int, what: str) -> int:
    """SIGKILL the first child of ``pid`` that listens on ``port``, then wait until as
    many children listen on it again, the killed one not among them; its pid."""
    before = listening_children(pid, port)
    os.kill(before[0], signal.SIGKILL)

    def replaced() -> bool:
        now = listening_children(pid, port)
        return len(now) == len(before) and before[0] not in now

    wait_until(replaced, timeout=60, what=f"a new {what} process")
    return before[0]
