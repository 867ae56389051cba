"""The hub's listening ports, each held by one hub only.

``pacs-hub serve`` opens the DICOM and HTTP ports once, in the hub process, and hands
the sockets to its gateway and HTTP processes (they accept on the same socket). The
port is bound *without* ``SO_REUSEPORT``, so a second hub started on the same port,
on any data folder, fails with a clear error instead of silently sharing the port
(the kernel would then spread the modalities' associations and the viewers'
requests over two archives).

A hub restarted right after a ``kill -9`` finds its port still held for a moment: the
old hub's processes receive SIGTERM when it dies (``PR_SET_PDEATHSIG``) and close
their listening sockets as they stop. :func:`claim` waits for the port
(:mod:`pacs_hub.release_wait`) before it gives up.
``SO_REUSEADDR`` stays on (Python's default for servers): connections of the old hub
still in TIME_WAIT do not hold the port.
"""

from __future__ import annotations

import errno
import socket

from pacs_hub.release_wait import until_released


class PortUnavailable(Exception):
    """The port cannot be listened on: held by another process, or refused by the OS."""

    def __init__(self, what: str, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {what} port {host}:{port}: {reason}")
        self.message = str(self)


def claim(what: str, host: str, port: int, backlog: int, wait: float) -> socket.socket:
    """A socket listening on ``host:port`` that no other process may share.

    ``what`` names the port in messages ("DICOM", "HTTP"). While another process
    listens on it, tries again for ``wait`` seconds
    (:func:`~pacs_hub.release_wait.until_released`); raises :class:`PortUnavailable`
    if it is still held then, or at once for any other refusal (a privileged port,
    an address this machine does not have).
    """

    def attempt() -> socket.socket | None:
        try:
            return socket.create_server((host, port), backlog=backlog)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PortUnavailable(what, host, port, exc.strerror or str(exc)) from exc
            return None

    listener = until_released(attempt, wait, f"{what} port {host}:{port}")
    if listener is None:
        reason = "another process listens on it (another hub on the same port?)"
        raise PortUnavailable(what, host, port, reason)
    return listener
