"""Importing this module registers every background task of the region (see worker.py)."""

from __future__ import annotations

from pacs_hub.archive import (
    retention_sweep,  # noqa: F401 (studies due for destruction)
    sweep,  # noqa: F401 (the integrity sweep)
    tier_sweep,  # noqa: F401 (storage tiers: moves, cache, replaced copies)
)
from pacs_hub.backup import tasks as backup_tasks  # noqa: F401 (backfill, resumed)
from pacs_hub.regional import health, identity, prefetch, routing  # noqa: F401 (they register tasks)
from pacs_hub.trust import audit_tasks  # noqa: F401 (audit retention and syslog)
