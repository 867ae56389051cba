"""The hub's background backfill: requested or interrupted backfills run (and resume)."""

from __future__ import annotations

from pacs_hub.backup.backfill import resume_all
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register


def _run(context: WorkerContext) -> None:
    resume_all(context.settings, context.database, context.stop)


BACKFILL = register(
    PeriodicTask("backup-backfill", lambda settings: settings.backup_interval, _run)
)
