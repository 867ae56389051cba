"""Waiting, at start-up, for what a hub stopped just before still holds.

A hub restarted right after a ``kill -9`` finds its ports (:mod:`pacs_hub.listeners`)
and its data folder (:mod:`pacs_hub.storage.data_lock`) still held for a moment by
the old hub's processes, which receive SIGTERM when it dies and let go as they stop.
:func:`until_released` tries again until they have, or ``PACS_HUB_PORT_RELEASE_WAIT``
seconds have passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

LOGGER = logging.getLogger(__name__)

RETRY_SECONDS = 0.2
T = TypeVar("T")


def until_released(attempt: Callable[[], T | None], wait: float, what: str) -> T | None:
    """``attempt()`` every :data:`RETRY_SECONDS` until it returns something (None: still
    held), for at most ``wait`` seconds, said once in the log as ``what`` is in use;
    None if it never succeeded."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        got = attempt()
        if got is not None or time.monotonic() >= deadline:
            return got
        if not said:
            LOGGER.warning(
                "%s is in use; waiting up to %.0f s for it to be released"
                " (the processes of a hub stopped just now?)",
                what,
                wait,
            )
            said = True
        time.sleep(RETRY_SECONDS)
