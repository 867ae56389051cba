"""Storage Commitment Push Model SCP (PS3.4 J): to be completed."""

from __future__ import annotations

from typing import Any

from pynetdicom.events import Event

from pacs_hub.gateway.context import GatewayContext


def handle_n_action(event: Event, ctx: GatewayContext) -> tuple[int, Any]:
    """EVT_N_ACTION handler."""
    return 0x0110, None
