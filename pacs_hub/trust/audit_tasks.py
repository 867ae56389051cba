"""Background work of the audit trail: retention and shipping to the audit repository.

``audit-retention`` (hourly) prunes the entries older than
``settings.audit_retention_days`` (at least 183: CSP R6113-9-2 keeps traces 6
rolling months) in batches, each leaving a checkpoint so that ``verify`` still
proves the kept chain (:func:`pacs_hub.trust.audit.prune`). A break found among
the entries to prune stops it (logged as an error): evidence is never pruned. When an audit
repository is configured, nothing not yet shipped is pruned, however old.

``audit-syslog`` (every few seconds, only with ``audit_syslog_url``) ships new
entries as DICOM audit messages over TLS syslog (:mod:`pacs_hub.trust.syslog`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from pacs_hub.config import Settings
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register
from pacs_hub.storage.database import Database
from pacs_hub.trust import audit
from pacs_hub.trust.syslog import SyslogSender, read_cursor

LOGGER = logging.getLogger(__name__)
RETENTION_INTERVAL = 3600.0
SYSLOG_INTERVAL = 2.0
BATCH = 10_000


def retention_cutoff(settings: Settings, now: datetime | None = None) -> datetime:
    """Entries written before this instant (naive UTC) may be pruned."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    return now - timedelta(days=settings.audit_retention_days)


def prune_expired(
    settings: Settings, database: Database, *, now: datetime | None = None, batch: int = BATCH
) -> int:
    """Prune every expired entry, ``batch`` per transaction; return how many went."""
    cutoff = retention_cutoff(settings, now)
    keep_from = read_cursor(settings.data_dir) + 1 if settings.audit_syslog_url else None
    total = 0
    while True:
        with database.session() as session:
            done = audit.prune(session.connection(), cutoff, keep_from_id=keep_from, batch=batch)
        if done is None:
            return total
        total += done.count
        if done.count < batch:
            return total


def _retention(context: WorkerContext) -> None:
    try:
        prune_expired(context.settings, context.database)
    except audit.AuditChainBroken as exc:
        LOGGER.error("%s", exc.message)


SENDER = SyslogSender()


def _ship(context: WorkerContext) -> None:
    SENDER.run_for(context.settings, context.database)


register(PeriodicTask("audit-retention", interval=lambda _s: RETENTION_INTERVAL, run=_retention))
register(
    PeriodicTask(
        "audit-syslog",
        interval=lambda s: SYSLOG_INTERVAL if s.audit_syslog_url else 0.0,
        run=_ship,
    )
)
