"""Process set-up of the hub (pacs_hub.service) that no network test can see."""

from __future__ import annotations

import gc

from pacs_hub.service import freeze_startup_heap


def test_startup_objects_leave_the_collectors_full_passes() -> None:
    before = gc.get_freeze_count()
    kept = [[index] for index in range(1000)]  # tracked containers, like start-up's
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()
