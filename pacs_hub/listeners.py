"""The hub's listening ports, each held by one hub only.

``pacs-hub serve`` opens the DICOM and HTTP ports once, in the hub process, and hands
the sockets to its gateway and HTTP processes (they accept on the same socket). The
port is bound *without* ``SO_REUSEPORT``, so a second hub started on the same port,
on any data folder, fails with a clear error instead of silently sharing the port
(the kernel would then spread the modalities' associations and the viewers'
requests over two archives).

A hub restarted right after a ``kill -9`` finds its port still held for a moment: the
old hub's processes receive SIGTERM when it dies (``PR_SET_PDEATHSIG``) and close
their listening sockets as they stop. :func:`claim` waits for the port (at most
``PACS_HUB_PORT_RELEASE_WAIT`` seconds, 20 by default, said once in the log) before
it gives up.
``SO_REUSEADDR`` stays on (Python's default for servers): connections of the old hub
still in TIME_WAIT do not hold the port.
"""

from __future__ import annotations

import errno
import logging
import socket
import time

LOGGER = logging.getLogger(__name__)

RETRY_SECONDS = 0.2


class PortUnavailable(Exception):
    """The port cannot be listened on: held by another process, or refused by the OS."""

    def __init__(self, what: str, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {what} port {host}:{port}: {reason}")
        self.message = str(self)


def claim(what: str, host: str, port: int, backlog: int, wait: float) -> socket.socket:
    """A socket listening on ``host:port`` that no other process may share.

    ``what`` names the port in messages ("DICOM", "HTTP"). While another process
    listens on it, tries again every :data:`RETRY_SECONDS` for ``wait`` seconds;
    raises :class:`PortUnavailable` if it is still held then, or at once for any
    other refusal (a privileged port, an address this machine does not have).
    """
    deadline = time.monotonic() + wait
    waited = False
    while True:
        try:
            return socket.create_server((host, port), backlog=backlog)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PortUnavailable(what, host, port, exc.strerror or str(exc)) from exc
            if time.monotonic() >= deadline:
                reason = "another process listens on it (another hub on the same port?)"
                raise PortUnavailable(what, host, port, reason) from exc
            if not waited:
                LOGGER.warning(
                    "%s port %s:%d is in use; waiting up to %.0f s for it to be released"
                    " (the processes of a hub stopped just now?)",
                    what,
                    host,
                    port,
                    wait,
                )
                waited = True
            time.sleep(RETRY_SECONDS)
