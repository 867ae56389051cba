"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3): to be completed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pynetdicom.events import Event

from pacs_hub.gateway.context import GatewayContext


def handle_move(event: Event, ctx: GatewayContext) -> Iterator[Any]:
    """EVT_C_MOVE handler."""
    yield None, None


def handle_get(event: Event, ctx: GatewayContext) -> Iterator[Any]:
    """EVT_C_GET handler."""
    yield 0
