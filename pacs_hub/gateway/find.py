"""C-FIND SCP (PS3.4 C.4.1): to be completed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pynetdicom.events import Event

from pacs_hub.gateway.context import GatewayContext


def handle_find(event: Event, ctx: GatewayContext) -> Iterator[tuple[int, Any]]:
    """EVT_C_FIND handler."""
    yield 0xC000, None
