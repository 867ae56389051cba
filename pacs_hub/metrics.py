"""Operational metrics in the Prometheus text format, for the regional operator.

``GET /metrics`` (:mod:`pacs_hub.web.metrics_api`) answers what every process of the
hub counted, added up, and what is read from the index and the data folder at the
time of the scrape:

* counters: DICOM requests by service (``pacs_hub_dimse_requests_total``) and their
  answers by status class (``pacs_hub_dimse_responses_total``, for C-ECHO, C-STORE and
  storage commitment), instances through the ingest path by door and outcome and their
  bytes (``pacs_hub_ingested_instances_total``, ``pacs_hub_ingested_bytes_total``),
  HTTP requests by route template, method and status, with their durations
  (``pacs_hub_http_requests_total``, ``pacs_hub_http_request_duration_seconds``);
* read at scrape time (:class:`HubCollector`): the archive's studies, instances and
  bytes, the integrity sweep (damaged instances, progress, cycles), each enrolled
  establishment's backup RPO and alert, the routing queue by state, each PACS node's
  health, and the gateway processes alive.

No label carries patient data: DICOM services, status classes, doors, route templates
(``/dicom-web/studies/{study}``, never a UID), AE titles and establishment codes.

The gateway and HTTP processes, and the hub process's background tasks, count into
files of one folder, ``DATA_DIR/metrics`` (prometheus_client's multiprocess mode),
which ``serve`` empties as it starts (:func:`enable`); a process that never called it
(a CLI command, a test) counts in memory, for nobody.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import text

from pacs_hub.config import Settings
from pacs_hub.storage.database import Database

FOLDER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
ARCHIVE_CACHE_SECONDS = 30.0
"""The archive's totals are summed over every study at most this often."""
SUCCESS, WARNING, FAILURE = "success", "warning", "failure"


def folder(settings: Settings) -> Path:
    """``DATA_DIR/metrics``: where the hub's processes count."""
    return settings.data_dir / "metrics"


def enable(settings: Settings) -> None:
    """Count into ``DATA_DIR/metrics`` from now on, in this process and the processes
    it starts (they inherit the variable); the folder is emptied first (a new hub's
    counters start at zero, as Prometheus expects of a restarted target)."""
    path = folder(settings)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[FOLDER_VARIABLE] = str(path)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _counters.cache_clear()
    _children.clear()


@dataclass(frozen=True, slots=True)
class _Counters:
    registry: CollectorRegistry
    """Theirs, exposed as it is when the process counts in memory (not multiprocess)."""
    dimse_requests: Counter
    dimse_responses: Counter
    ingested: Counter
    ingested_bytes: Counter
    http_requests: Counter
    http_seconds: Histogram


class _Once:
    """:func:`_counters`' cache: made on first use, after :func:`enable` if any."""

    def __init__(self) -> None:
        self.made: _Counters | None = None
        self.lock = threading.Lock()

    def __call__(self) -> _Counters:
        made = self.made
        if made is None:
            with self.lock:
                made = self.made = self.made or _make()
        return made

    def cache_clear(self) -> None:
        self.made = None


def _make() -> _Counters:
    registry = CollectorRegistry()
    return _Counters(
        registry,
        Counter(
            "pacs_hub_dimse_requests",
            "DICOM requests received, by DIMSE service",
            ["service"],
            registry=registry,
        ),
        Counter(
            "pacs_hub_dimse_responses",
            "Final DICOM responses of C-ECHO, C-STORE and N-ACTION, by status class",
            ["service", "status"],
            registry=registry,
        ),
        Counter(
            "pacs_hub_ingested_instances",
            "Instances through the ingest path, by door and outcome"
            " (stored, duplicate, replaced, rejected)",
            ["door", "outcome"],
            registry=registry,
        ),
        Counter(
            "pacs_hub_ingested_bytes",
            "Bytes of the instances stored by the ingest path, by door",
            ["door"],
            registry=registry,
        ),
        Counter(
            "pacs_hub_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        ),
        Histogram(
            "pacs_hub_http_request_duration_seconds",
            "Time to answer HTTP requests (to the end of the body), by route template",
            ["route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
    )


_counters = _Once()


_children: dict[tuple[Any, ...], Any] = {}
"""Labelled children already made (``labels()`` costs more than the increment)."""


def _child(metric: Counter | Histogram, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def dimse_request(service: str) -> None:
    """One DICOM request of ``service`` (C-ECHO, C-STORE, C-FIND, ...) received."""
    _child(_counters().dimse_requests, service).inc()


def dimse_response(service: str, status: int) -> None:
    """The final response of a ``service`` request, by its status (PS3.7 C)."""
    _child(_counters().dimse_responses, service, status_class(status)).inc()


def status_class(status: int) -> str:
    """success, warning or failure (PS3.7 Annex C: 0x0000; 0x0001, 0xBxxx; the rest)."""
    if status == 0:
        return SUCCESS
    if status == 0x0001 or status & 0xF000 == 0xB000 or status == 0x0107 or status == 0x0116:
        return WARNING
    return FAILURE


def ingested(door: str, outcome: str, size: int = 0) -> None:
    """One instance through the ingest path's ``door``; ``size`` bytes when stored."""
    counters = _counters()
    _child(counters.ingested, door, outcome).inc()
    if size:
        _child(counters.ingested_bytes, door).inc(size)


def http_request(route: str, method: str, status: int, seconds: float) -> None:
    """One HTTP request answered."""
    counters = _counters()
    _child(counters.http_requests, route, method, str(status)).inc()
    _child(counters.http_seconds, route).observe(seconds)


class HubCollector(Collector):
    """What is read at scrape time: the archive, the integrity sweep, backups, routing,
    nodes, gateways."""

    def __init__(
        self, settings: Settings, database: Database, gateways_alive: Callable[[], int] | None
    ) -> None:
        self.settings = settings
        self.database = database
        self.gateways_alive = gateways_alive
        self._archive: tuple[float, tuple[int, int, int]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._archive_totals()
        yield from self._integrity()
        yield from self._retention()
        yield from self._backups()
        yield from self._routing_and_nodes()
        if self.gateways_alive is not None:
            yield _gauge(
                "pacs_hub_gateway_processes_alive",
                "DICOM gateway processes accepting associations",
                self.gateways_alive(),
            )

    def _archive_totals(self) -> Iterator[GaugeMetricFamily]:
        cached = self._archive
        if cached is None or time.monotonic() - cached[0] > ARCHIVE_CACHE_SECONDS:
            with self.database.engine.connect() as conn:
                row = conn.execute(
                    text(
                        "SELECT COUNT(*), COALESCE(SUM(num_instances), 0),"
                        " COALESCE(SUM(size_bytes), 0) FROM studies"
                    )
                ).one()
            cached = self._archive = (time.monotonic(), (int(row[0]), int(row[1]), int(row[2])))
        studies, instances, size = cached[1]
        yield _gauge("pacs_hub_archive_studies", "Studies in the archive", studies)
        yield _gauge("pacs_hub_archive_instances", "Instances in the archive", instances)
        yield _gauge("pacs_hub_archive_bytes", "Bytes of the archive's instances", size)

    def _integrity(self) -> Iterator[GaugeMetricFamily]:
        from pacs_hub.archive import sweep

        state = sweep.load(self.settings)
        damaged = GaugeMetricFamily(
            "pacs_hub_integrity_damaged_instances",
            "Damaged instances the integrity sweep found, in the current and the last cycle",
            labels=["cycle"],
        )
        checked = GaugeMetricFamily(
            "pacs_hub_integrity_checked_instances",
            "Instances the integrity sweep checked, in the current and the last cycle",
            labels=["cycle"],
        )
        for name in ("current", "last"):
            cycle = state.get(name) or {}
            damaged.add_metric([name], int(cycle.get("damaged_count", 0)))
            checked.add_metric([name], int(cycle.get("checked", 0)))
        yield damaged
        yield checked
        yield _gauge(
            "pacs_hub_integrity_cycles_completed",
            "Cycles of the integrity sweep completed (in this data folder)",
            int(state.get("cycles", 0)),
        )

    def _retention(self) -> Iterator[GaugeMetricFamily]:
        from pacs_hub.archive import retention_sweep

        due = retention_sweep.load(self.settings).get("due") or {}
        studies = GaugeMetricFamily(
            "pacs_hub_retention_due_studies",
            "Studies whose legal retention has ended (last daily count), per establishment",
            labels=["establishment"],
        )
        size = GaugeMetricFamily(
            "pacs_hub_retention_due_bytes",
            "Bytes of the studies whose legal retention has ended, per establishment",
            labels=["establishment"],
        )
        for code, counts in sorted(due.items()):
            studies.add_metric([code], int(counts.get("studies", 0)))
            size.add_metric([code], int(counts.get("bytes", 0)))
        yield studies
        yield size

    def _backups(self) -> Iterator[GaugeMetricFamily]:
        from pacs_hub.backup import state

        rpo = GaugeMetricFamily(
            "pacs_hub_backup_rpo_seconds",
            "Age of the newest instance of an establishment's PACS not yet safe in the hub",
            labels=["establishment"],
        )
        alert = GaugeMetricFamily(
            "pacs_hub_backup_rpo_alert",
            "1 when an establishment's RPO is above PACS_HUB_BACKUP_RPO_ALERT_MINUTES",
            labels=["establishment"],
        )
        limit = self.settings.backup_rpo_alert_minutes * 60
        for code in state.enrolled(self.settings):
            seconds = (state.load(self.settings, code).get("reconciliation") or {}).get(
                "rpo_seconds"
            )
            if seconds is not None:
                rpo.add_metric([code], float(seconds))
                alert.add_metric([code], 1.0 if seconds > limit else 0.0)
        yield rpo
        yield alert

    def _routing_and_nodes(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "pacs_hub_routing_queue", "Studies in the routing queue, by state", labels=["state"]
        )
        up = GaugeMetricFamily(
            "pacs_hub_node_up",
            "1 when a PACS node answered its last C-ECHO, 0 when not (unknown: absent)",
            labels=["ae_title"],
        )
        with self.database.engine.connect() as conn:
            counts: dict[str, int] = dict(
                conn.execute(text("SELECT state, COUNT(*) FROM routing_queue GROUP BY state")).all()
            )
            nodes = conn.execute(
                text("SELECT ae_title, health_status FROM nodes WHERE role = 'pacs'")
            ).all()
        for name in ("queued", "sending", "sent", "failed"):
            queue.add_metric([name], int(counts.get(name, 0)))
        for ae_title, health in nodes:
            if health in ("up", "down"):
                up.add_metric([str(ae_title)], 1.0 if health == "up" else 0.0)
        yield queue
        yield up


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def exposition(collector: HubCollector) -> bytes:
    """The text exposition: every process's counters added up, then ``collector``'s."""
    path = os.environ.get(FOLDER_VARIABLE)
    if path:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    else:
        registry = _counters().registry
    return generate_latest(registry) + generate_latest(_Only(collector))


class _Only(CollectorRegistry):
    """A registry of one collector, made per scrape (its collect() runs once)."""

    def __init__(self, collector: Collector) -> None:
        super().__init__(auto_describe=False)
        self._only = collector

    def collect(self) -> Iterator[Any]:
        yield from self._only.collect()


def with_status(result: Any) -> int | None:
    """The status of a DIMSE handler's answer (an int or a status data set), if any."""
    if isinstance(result, int):
        return result
    status = getattr(result, "Status", None)
    return int(status) if isinstance(status, int) else None
