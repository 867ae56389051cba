"""The ``archive-tiering`` background task: keeps the tiers (:mod:`pacs_hub.archive.tiers`).

Every :data:`CHECK_SECONDS` ``pacs-hub serve`` trims the cold tier's cache to
``PACS_HUB_COLD_CACHE_MB`` and erases the blobs no instance names any more
(:func:`~pacs_hub.archive.tiers.free_garbage`); once every
``PACS_HUB_TIER_SWEEP_HOURS``, when ``PACS_HUB_COLD_AFTER_DAYS`` is set (0 = never),
it moves to the cold tier every study that received no instance for that many days.
The last pass is kept in ``DATA_DIR/archive/tiers.json``; the log says counts, never a
patient.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pacs_hub.archive import tiers
from pacs_hub.config import Settings
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register
from pacs_hub.storage import cold
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.durable import read_json, write_json

LOGGER = logging.getLogger(__name__)
CHECK_SECONDS = 600.0


def state_path(settings: Settings) -> Path:
    return tiers.folder(settings.data_dir) / "tiers.json"


def load(settings: Settings) -> dict[str, Any]:
    """The last move pass ({} before the first)."""
    return read_json(state_path(settings))


def moves_due(settings: Settings) -> bool:
    """True when studies are to be moved by age and the last pass is older than
    ``tier_sweep_hours`` (or missing)."""
    if settings.cold_after_days <= 0 or settings.tier_sweep_hours <= 0:
        return False
    try:
        last = datetime.fromisoformat(str(load(settings).get("finished_at")))
    except ValueError:
        return True
    return (tiers.now() - last).total_seconds() >= settings.tier_sweep_hours * 3600.0


def move_old(
    settings: Settings, database: Database, store: BlobStore, stop: Any = None
) -> dict[str, Any]:
    """Move every study untouched for ``cold_after_days`` to the cold tier (hold
    :func:`tiers.alone`); the pass's counts, also saved."""
    started = tiers.now()
    before = started - timedelta(days=settings.cold_after_days)
    with database.read_connection() as conn:
        uids = tiers.candidates(conn, before)
    totals = {"studies": 0, "instances": 0, "bytes": 0, "stored_bytes": 0, "damaged": 0}
    for uid in uids:
        if stop is not None and stop.is_set():
            break
        try:
            moved = tiers.move_study(database, store, uid)
        except tiers.UnknownStudy:
            continue  # destroyed since it was listed
        totals["studies"] += bool(moved.instances)
        totals["instances"] += moved.instances
        totals["bytes"] += moved.bytes
        totals["stored_bytes"] += moved.stored_bytes
        totals["damaged"] += len(moved.damaged)
    result = {
        "started_at": started.isoformat(),
        "finished_at": tiers.now().isoformat(),
        "older_than_days": settings.cold_after_days,
        **totals,
    }
    write_json(state_path(settings), result, indent=1)
    LOGGER.info(
        "tiers: %d stud(ies), %d instance(s), %.1f MB moved to the cold tier (%.1f MB stored)",
        totals["studies"],
        totals["instances"],
        totals["bytes"] / 1e6,
        totals["stored_bytes"] / 1e6,
    )
    return result


def run_pass(ctx: WorkerContext) -> None:
    """Trim the cache, free the garbage, move the studies due."""
    settings, store = ctx.settings, ctx.blobs
    cold.trim_cache(store.blobs, settings.cold_cache_mb << 20)
    try:
        with tiers.alone(settings.data_dir):
            tiers.free_garbage(ctx.database, store)
            if moves_due(settings):
                move_old(settings, ctx.database, store, ctx.stop)
    except tiers.TierBusy:
        LOGGER.info("tiers: an operator's tier command is running; next pass later")


register(PeriodicTask("archive-tiering", interval=lambda _s: CHECK_SECONDS, run=run_pass))
