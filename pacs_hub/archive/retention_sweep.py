"""The ``archive-retention`` background task: what the region's retention makes due.

Once a day (``PACS_HUB_RETENTION_SWEEP_HOURS``; 0 = off; a restart does not count
again before that) ``pacs-hub serve`` computes
the studies whose legal retention has ended (:func:`pacs_hub.archive.retention.due`),
counts them and their bytes per establishment, logs each establishment that has some
(counts only, never a patient), and keeps the result in
``DATA_DIR/archive/retention.json``, which ``GET /metrics`` exposes
(``pacs_hub_retention_due_studies``, ``pacs_hub_retention_due_bytes``) so an operator
is told when a destruction is to be proposed. It destroys nothing.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from pacs_hub.archive import retention
from pacs_hub.config import Settings
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register
from pacs_hub.storage.database import Database
from pacs_hub.storage.durable import read_json, write_json

LOGGER = logging.getLogger(__name__)
CHECK_SECONDS = 3600.0
"""How often the task looks whether a count is due."""
NO_ESTABLISHMENT = "-"
"""How studies sent by no registered establishment's node are counted."""


def state_path(settings: Settings) -> Path:
    return settings.data_dir / "archive" / "retention.json"


def sweep(settings: Settings, database: Database) -> dict[str, Any]:
    """Count the studies due today per establishment; save and return the counts."""
    today = retention.now().date()
    with database.reader() as session:
        found = retention.due(session.connection(), settings, today)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"studies": 0, "bytes": 0})
    for study in found:
        place = counts[study.establishment or NO_ESTABLISHMENT]
        place["studies"] += 1
        place["bytes"] += study.size_bytes
    due = dict(sorted(counts.items()))
    result = {"computed_at": retention.now().isoformat(), "as_of": retention.da(today), "due": due}
    write_json(state_path(settings), result, indent=1)
    for code, place in due.items():
        LOGGER.info(
            "retention: %d stud(ies) (%.1f MB) of establishment %s are due for destruction",
            place["studies"],
            place["bytes"] / 1e6,
            code,
        )
    return result


def load(settings: Settings) -> dict[str, Any]:
    """The last sweep's counts ({} before the first)."""
    return read_json(state_path(settings))


def due_now(settings: Settings) -> bool:
    """True when the last count is older than ``retention_sweep_hours`` (or missing):
    a restarted hub does not count again what it counted an hour ago."""
    last = load(settings).get("computed_at")
    try:
        age = (retention.now() - datetime.fromisoformat(str(last))).total_seconds()
    except ValueError:
        return True
    return age >= settings.retention_sweep_hours * 3600.0


def _run(ctx: WorkerContext) -> None:
    if due_now(ctx.settings):
        sweep(ctx.settings, ctx.database)


register(
    PeriodicTask(
        "archive-retention",
        interval=lambda s: min(CHECK_SECONDS, s.retention_sweep_hours * 3600.0),
        run=_run,
    )
)
