"""Health of the establishments' PACS: a C-ECHO to every ``pacs`` node on a schedule.

The hub acts as a Verification SCU (PS3.4 A, C-ECHO of PS3.7 9.1.5) towards each
node of role ``pacs``, every ``PACS_HUB_HEALTH_CHECK_INTERVAL`` seconds, with short
ACSE, DIMSE and network timeouts so that a dead PACS costs at most a few seconds.
Each node's row keeps ``health_status`` (up or down), ``down_since`` (the first
failed check of the current outage, cleared when it answers again), ``latency_ms``
(association plus C-ECHO round trip of the last successful check) and
``health_checked_at``. A transition (up -> down, down -> up) is logged once, not
every check.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from pacs_hub.config import Settings
from pacs_hub.gateway.server import prepare_associations
from pacs_hub.regional.nodes import RemoteNode, list_nodes
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Node

LOGGER = logging.getLogger(__name__)
ECHO_TIMEOUT = 5.0
"""Seconds for each step (TCP connect, A-ASSOCIATE, C-ECHO) of one check."""
MAX_PARALLEL = 8
SUCCESS = 0x0000
THREAD_PREFIX = "hub-echo"
CONNECT_ERRORS = ("Association request failed: unable to connect", "TCP Initialisation Error")


class _QuietChecks(logging.Filter):
    """While a health round runs, drop pynetdicom's connect-failure records (ERROR, on
    every check of a dead PACS); the round logs each node's transition itself, once.

    pynetdicom logs them from its own DUL thread, so the filter cannot tell the
    check's connections from others: a connect failure of another requestor in this
    process during a round (a few seconds) loses that record, not its own handling.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.rounds and str(record.msg).startswith(CONNECT_ERRORS))

    @contextmanager
    def active(self) -> Iterator[None]:
        with self.lock:
            self.rounds += 1
        try:
            yield
        finally:
            with self.lock:
                self.rounds -= 1


def _quiet_checks() -> _QuietChecks:
    """The filter on ``pynetdicom.transport`` (installed once per process)."""
    transport = logging.getLogger("pynetdicom.transport")
    for existing in transport.filters:
        if isinstance(existing, _QuietChecks):
            return existing
    quiet = _QuietChecks()
    transport.addFilter(quiet)
    return quiet


@dataclass(frozen=True, slots=True)
class EchoResult:
    """One C-ECHO: the latency in ms when the node answered Success, else why not."""

    ae_title: str
    latency_ms: float | None
    reason: str = ""


def echo(node: RemoteNode, calling_ae_title: str, timeout: float = ECHO_TIMEOUT) -> EchoResult:
    """Associate with ``node``, send one C-ECHO, release; never raises."""
    prepare_associations()  # once per process; else each PDU waits on Nagle
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    tls_args = (ssl.create_default_context(), node.host) if node.tls else None
    started = time.perf_counter()
    try:
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, tls_args=tls_args)
    except Exception as exc:  # resolver or TLS set-up errors: the node is down for us
        return EchoResult(node.ae_title, None, f"cannot associate: {exc}")
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "no association (refused or silent)"
        return EchoResult(node.ae_title, None, why)
    try:
        answer = assoc.send_c_echo()
        elapsed = (time.perf_counter() - started) * 1000
    finally:
        assoc.release()
    value = answer.get("Status") if answer else None
    if value != SUCCESS:
        return EchoResult(node.ae_title, None, f"C-ECHO status {value!r}")
    return EchoResult(node.ae_title, round(elapsed, 3))


def record(db: Database, result: EchoResult, establishment: str = "") -> None:
    """Store one check in the node's row; log when the status changes."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with db.session() as session:
        node = session.scalars(select(Node).where(Node.ae_title == result.ae_title)).one_or_none()
        if node is None:
            return  # removed while we were checking it
        previous = node.health_status
        node.health_checked_at = now
        node.latency_ms = result.latency_ms
        if result.latency_ms is None:
            node.health_status = "down"
            if previous != "down" or node.down_since is None:
                node.down_since = now
        else:
            node.health_status = "up"
            node.down_since = None
    owner = establishment or "none"
    if result.latency_ms is None and previous != "down":
        LOGGER.warning(
            "node %s (establishment %s) is down: %s", result.ae_title, owner, result.reason
        )
    elif result.latency_ms is not None and previous != "up":
        LOGGER.info(
            "node %s (establishment %s) is up (%.1f ms)", result.ae_title, owner, result.latency_ms
        )


def check_nodes(db: Database, settings: Settings) -> list[EchoResult]:
    """C-ECHO every node of role ``pacs`` in parallel and record the results."""
    nodes = list_nodes(db, role="pacs")
    if not nodes:
        return []
    timeout = min(ECHO_TIMEOUT, max(1.0, settings.health_check_interval or ECHO_TIMEOUT))
    with (
        _quiet_checks().active(),
        ThreadPoolExecutor(min(MAX_PARALLEL, len(nodes)), THREAD_PREFIX) as pool,
    ):
        results = list(pool.map(lambda n: echo(n, settings.ae_title, timeout), nodes))
    for node, result in zip(nodes, results, strict=True):
        record(db, result, node.establishment)
    return results


def run(ctx: WorkerContext) -> None:
    """The periodic task's body."""
    check_nodes(ctx.database, ctx.settings)


TASK = register(
    PeriodicTask(name="node-health", interval=lambda s: s.health_check_interval, run=run)
)
