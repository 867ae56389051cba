"""The Celery application of the hub's long jobs: queues ``cpu``, ``gpu`` (processing), ``io``.

Built from the hub's :class:`~pacs_hub.config.Settings` by :func:`make_app` (no module-level
app): the hub builds one to submit jobs, ``pacs-hub worker -Q gpu`` one to run them.

Broker and result backend:

* embedded default (``PACS_HUB_BROKER_URL`` and ``PACS_HUB_RESULT_BACKEND`` empty):
  SQLite files in ``<data dir>/jobs/`` (kombu's SQLAlchemy transport, Celery's database
  backend), so ``pacs-hub serve`` needs no server;
* production: Redis (``redis://host:6379/0`` and ``redis://host:6379/1``), workers on
  other machines; a GPU node runs ``pacs-hub worker -Q gpu``.

Delivery: late acknowledgement, one message reserved at a time, and a message whose worker
process died is given back to the queue (``task_reject_on_worker_lost``), so a job whose
worker is killed runs again; the tasks are idempotent (:mod:`workers.tasks`).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from pacs_hub.config import Settings
from pacs_hub.ingest import Ingestor
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database

QUEUES = ("cpu", "gpu", "io")
"""``cpu`` and ``gpu``: post-processing; ``io``: transfers."""
PROCESS_TASK = "pacs_hub.process_series"


def jobs_dir(settings: Settings) -> Path:
    """``<data dir>/jobs``: the embedded broker, result backend and job ledger."""
    folder = (settings.data_dir / "jobs").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def broker_url(settings: Settings) -> str:
    """The broker: ``PACS_HUB_BROKER_URL``, or a SQLite file (SQLAlchemy transport)."""
    return settings.broker_url or f"sqla+sqlite:///{jobs_dir(settings) / 'broker.sqlite3'}"


def result_backend(settings: Settings) -> str:
    """The result backend: ``PACS_HUB_RESULT_BACKEND``, or a SQLite file."""
    return settings.result_backend or f"db+sqlite:///{jobs_dir(settings) / 'results.sqlite3'}"


class HubCelery(Celery):
    """A Celery app carrying the hub's settings and, in a worker, its storage services."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("pacs_hub", broker=broker_url(settings), backend=result_backend(settings))
        self.hub_settings = settings

    @property
    def embedded(self) -> bool:
        """True on the serverless embedded broker (no broadcast: revoke is a flag only)."""
        return not self.hub_settings.broker_url

    @cached_property
    def database(self) -> Database:
        """The index, opened on first use in the process that runs the task."""
        return Database(self.hub_settings.index_url)

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.hub_settings.data_dir)

    @cached_property
    def ingestor(self) -> Ingestor:
        """The one ingest path (results are stored like any received instance)."""
        return Ingestor(self.database, self.blobs, self.hub_settings.duplicate_policy, "processing")


def _config(settings: Settings) -> dict[str, Any]:
    return {
        "task_queues": [Queue(name, routing_key=name) for name in QUEUES],
        "task_default_queue": "cpu",
        "task_create_missing_queues": False,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": False,  # the task writes its own states (workers.board)
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        # Redis: an unacknowledged job comes back after this (its worker died). The
        # SQLAlchemy transport passes its options to create_engine: none there.
        "broker_transport_options": (
            {"visibility_timeout": max(3600.0, settings.processing_stale_after * 4)}
            if settings.broker_url.startswith(("redis", "rediss"))
            else {}
        ),
        "result_expires": None,
    }


def make_app(settings: Settings) -> HubCelery:
    """The Celery app of a hub, with the processing task registered."""
    from workers import tasks  # the task module imports this one

    app = HubCelery(settings)
    app.conf.update(_config(settings))
    tasks.register(app)
    return app
