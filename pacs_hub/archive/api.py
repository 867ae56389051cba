"""Admin API ``/api/archive`` (regional administrators; every call audited by the policy).

* ``GET /api/archive/integrity``: the integrity sweep (:mod:`pacs_hub.archive.sweep`):
  whether it runs and at what rate, the current cycle (started, instances and bytes
  checked, damaged instances found so far with their UIDs, blob and problem), the last
  cycle completed, and when the next one starts.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from pacs_hub.archive import sweep
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.trust.users_api import admin_caller

router = APIRouter(prefix="/archive", dependencies=[Depends(admin_caller)])
Hub = Annotated[HubState, Depends(hub_state)]


@router.get("/integrity")
def integrity(hub: Hub) -> dict[str, Any]:
    """The integrity sweep's progress and findings."""
    return sweep.describe(hub.settings)
