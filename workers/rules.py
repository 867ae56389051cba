"""Processing by rule, and recovery of jobs whose worker died: a background task of the hub.

The ``processing`` task (:mod:`pacs_hub.regional.worker`, every
``PACS_HUB_PROCESSING_INTERVAL`` seconds) does two things each turn:

* **rules**: every CT series of a study that arrived (:class:`~pacs_hub.regional.arrivals.
  ArrivalWatch`) and has been unchanged for ``PACS_HUB_PROCESSING_SETTLE_SECONDS``, with
  more than ``PACS_HUB_PROCESSING_AUTO_MIN_SLICES`` instances (0 = off), gets the steps of
  ``PACS_HUB_PROCESSING_AUTO_PIPELINE`` (default ``mpr,mip``). Series the hub produced
  itself (sender ``PROCESSING``) are never processed again by rule. Submission is
  idempotent, so a study seen twice gives one job;
* **recovery**: a running job whose heartbeat stopped for ``PACS_HUB_PROCESSING_STALE_AFTER``
  seconds (its worker was killed) is sent again (:func:`workers.jobs.recover`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import exists, select

from pacs_hub.config import Settings
from pacs_hub.errors import HubError
from pacs_hub.regional.arrivals import ArrivalWatch
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register
from pacs_hub.storage.models import Instance, Series, Study
from workers import jobs
from workers.celery_app import HubCelery, make_app
from workers.tasks import SENDER

LOGGER = logging.getLogger(__name__)
WATCH = ArrivalWatch("processing")
RULE_SUBMITTER = "rule:auto-processing"
_APPS: dict[str, HubCelery] = {}


def hub_app(settings: Settings) -> HubCelery:
    """The hub's Celery app for submitting (one per data folder and broker, cached)."""
    cache_key = f"{settings.data_dir.resolve()}|{settings.broker_url}|{settings.result_backend}"
    if cache_key not in _APPS:
        _APPS[cache_key] = make_app(settings)
    return _APPS[cache_key]


def candidate_series(
    ctx: WorkerContext, since: datetime, until: datetime
) -> tuple[list[str], dict[str, datetime]]:
    """Large CT series of studies changed in ``since..until`` (and those studies' versions)."""
    minimum = ctx.settings.processing_auto_min_slices
    produced = exists().where(Instance.series_pk == Series.id, Instance.received_from_ae == SENDER)
    with ctx.database.reader() as session:
        versions = {
            str(uid): at
            for uid, at in session.execute(
                select(Study.study_instance_uid, Study.updated_at).where(
                    Study.updated_at >= since, Study.updated_at <= until
                )
            )
        }
        unseen = WATCH.unseen(versions)
        if not unseen:
            return [], versions
        series = session.scalars(
            select(Series.series_instance_uid)
            .join(Study, Study.id == Series.study_pk)
            .where(
                Study.study_instance_uid.in_(unseen[:500]),
                Series.modality == "CT",
                Series.num_instances > minimum,
                ~produced,
            )
        ).all()
    return [str(s) for s in series], versions


def apply_rules(ctx: WorkerContext) -> list[str]:
    """Submit the automatic pipeline for new large CT series; the job keys submitted."""
    settings = ctx.settings
    if settings.processing_auto_min_slices <= 0:
        return []
    steps = tuple(s.strip() for s in settings.processing_auto_pipeline.split(",") if s.strip())
    now = datetime.now(UTC).replace(tzinfo=None)
    since = WATCH.window_start(settings, now)
    settled = now - timedelta(seconds=settings.processing_settle_seconds)
    series, versions = candidate_series(ctx, since, settled)
    app = hub_app(settings)
    keys = []
    for series_uid in series:
        try:
            spec = jobs.describe(ctx.database, app, series_uid, steps, {})
        except HubError as exc:
            LOGGER.warning("processing rule: series skipped: %s", exc.message)
            continue
        job, sent = jobs.submit(app, spec, RULE_SUBMITTER)
        if sent:
            keys.append(job.key)
    WATCH.handled(settings, settled, since, versions)
    return keys


def run(ctx: WorkerContext) -> None:
    """One turn: rules, then recovery."""
    submitted = apply_rules(ctx)
    if submitted:
        LOGGER.info("processing rule: %d job(s) submitted", len(submitted))
    again = jobs.recover(hub_app(ctx.settings))
    if again:
        LOGGER.warning("processing: %d job(s) whose worker went silent sent again", len(again))


TASK = register(PeriodicTask("processing", lambda s: s.processing_interval, run))
