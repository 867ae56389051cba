"""The routing queue: forward arriving studies to the nodes their rules name (issue 5).

Two background tasks (:mod:`pacs_hub.regional.worker`) work on ``routing_queue``:

* ``routing-scan`` notices studies that arrived or grew (:mod:`~.arrivals`), reads
  what the rules look at (:mod:`~.routing_rules`: sending establishment, modality,
  body part, station of each series) and queues one item per matching enabled rule
  (one row per rule and study), unless the destination is a node that sent some of
  the study (no ping-pong). A study that gets new instances after it was sent,
  or after it failed, is queued again and sent whole again. Studies the hub pulled
  from a PACS itself (a retrieve job exists) are not arrivals and are not routed.
* ``routing-send`` (:mod:`~.routing_dispatch`) takes due items once their study has
  been quiet for :data:`~.routing_dispatch.SETTLE`, and sends the study's stored
  instances unchanged by C-STORE (:mod:`~.forwarding`), several destinations at
  once. A failure is retried after ``routing_retry_base * 2**(attempt - 1)`` seconds,
  up to ``routing_max_attempts`` tries, then the item is ``failed`` with the reason.

States: ``queued`` -> ``sending`` -> ``sent`` | ``queued`` (retry) | ``failed``. The
queue is rows in the index, so it survives a restart; an item left ``sending`` by a
crash is queued again when the hub starts.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from pacs_hub.errors import HubError
from pacs_hub.regional.arrivals import ArrivalWatch
from pacs_hub.regional.routing_dispatch import SETTLE, STATES, RoutingSend, requeue
from pacs_hub.regional.routing_rules import SeriesFacts, study_matches
from pacs_hub.regional.worker import PeriodicTask, WorkerContext, register
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import (
    Establishment,
    Instance,
    Node,
    RetrieveJob,
    RoutingItem,
    RoutingRule,
    Series,
    Study,
)

LOGGER = logging.getLogger(__name__)
SCAN_INTERVAL = 1.0
SEND_INTERVAL = 1.0


class InvalidQueueRequest(HubError):
    """A queue filter or action that cannot apply (unknown state, item being sent)."""

    http_status = 422
    title = "Invalid routing queue request"


class UnknownQueueItem(HubError):
    """No routing queue item has this id."""

    http_status = 404
    title = "Unknown routing queue item"


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """One study to forward by one rule, as the API and CLI show it."""

    id: int
    rule: str
    study_instance_uid: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Arrival:
    """A study that arrived or grew: its version (updated_at) and its series."""

    study_instance_uid: str
    updated_at: datetime
    series: tuple[SeriesFacts, ...]
    senders: frozenset[str] = frozenset()
    """Calling AE titles its instances came from."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- the queue as the API and CLI see it ---------------------------------------------


def list_queue(
    db: Database,
    *,
    study: str | None = None,
    state: str | None = None,
    rule: str | None = None,
    item_id: int | None = None,
    limit: int = 1000,
) -> list[QueueRecord]:
    """Queue items, newest first, filtered by study UID, state, rule name or id."""
    if state and state not in STATES:
        raise InvalidQueueRequest(f"state must be one of {', '.join(STATES)}, got {state!r}")
    where: list[ColumnElement[bool]] = []
    if item_id is not None:
        where.append(RoutingItem.id == item_id)
    if study:
        where.append(RoutingItem.study_instance_uid == study.strip())
    if state:
        where.append(RoutingItem.state == state)
    if rule:
        where.append(RoutingRule.name == rule.strip())
    stmt = (
        select(RoutingItem, RoutingRule.name, Node.ae_title)
        .join(RoutingRule, RoutingRule.id == RoutingItem.rule_pk)
        .join(Node, Node.id == RoutingItem.destination_node_pk)
        .where(*where)
        .order_by(RoutingItem.id.desc())
        .limit(limit)
    )
    with db.reader() as session:
        return [_record(item, name, ae) for item, name, ae in session.execute(stmt)]


def _record(item: RoutingItem, rule: str, destination: str) -> QueueRecord:
    return QueueRecord(
        id=item.id,
        rule=rule,
        study_instance_uid=item.study_instance_uid,
        destination=destination,
        state=item.state,
        attempts=item.attempts,
        next_attempt_at=item.next_attempt_at,
        last_error=item.last_error,
        created_at=item.created_at,
        updated_at=item.updated_at,
    )


def _queue_record(session: Session, item: RoutingItem) -> QueueRecord:
    rule = session.get(RoutingRule, item.rule_pk)
    node = session.get(Node, item.destination_node_pk)
    return _record(item, rule.name if rule else "", node.ae_title if node else "")


def retry_item(db: Database, item_id: int) -> QueueRecord:
    """Queue a failed (or sent) item again, with its attempts reset."""
    with db.session() as session:
        item = session.get(RoutingItem, item_id)
        if item is None:
            raise UnknownQueueItem(f"no routing queue item {item_id}")
        if item.state in ("queued", "sending"):
            raise InvalidQueueRequest(f"item {item_id} is already {item.state}")
        requeue(item, _now())
        return _queue_record(session, item)


# -- routing-scan: arrivals -> queue items --------------------------------------------


def _sender_establishments(session: Session) -> dict[str, str]:
    """AE title -> code of the establishment owning the node."""
    rows = session.execute(
        select(Node.ae_title, Establishment.code).join(
            Establishment, Establishment.id == Node.establishment_pk
        )
    )
    return {ae: code for ae, code in rows}


def read_arrivals(session: Session, since: datetime) -> list[Arrival]:
    """Studies updated after ``since`` that the hub did not pull itself, with their series."""
    pulled = select(RetrieveJob.study_instance_uid)
    rows = session.execute(
        select(
            Study.study_instance_uid,
            Study.updated_at,
            Series.id,
            Series.modality,
            Series.body_part_examined,
            Series.station_name,
            Instance.received_from_ae,
        )
        .join(Series, Series.study_pk == Study.id)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Study.updated_at > since, Study.study_instance_uid.not_in(pulled))
        .distinct()
    ).all()
    owners = _sender_establishments(session)
    versions: dict[str, datetime] = {}
    series: dict[str, dict[int, tuple[str, str, str]]] = defaultdict(dict)
    owned_by: dict[int, set[str]] = defaultdict(set)
    callers: dict[str, set[str]] = defaultdict(set)
    for uid, updated, series_pk, modality, body_part, station, ae in rows:
        versions[uid] = updated
        series[uid][series_pk] = (modality, body_part, station)
        callers[uid].add(ae)
        if ae in owners:
            owned_by[series_pk].add(owners[ae])
    return [
        Arrival(
            uid,
            versions[uid],
            tuple(
                SeriesFacts(*facts, establishments=frozenset(owned_by[pk]))
                for pk, facts in series[uid].items()
            ),
            frozenset(callers[uid]),
        )
        for uid in versions
    ]


def _enqueue(session: Session, rule: RoutingRule, arrival: Arrival, now: datetime) -> None:
    item = session.scalars(
        select(RoutingItem).where(
            RoutingItem.rule_pk == rule.id,
            RoutingItem.study_instance_uid == arrival.study_instance_uid,
        )
    ).first()
    if item is None:
        session.add(
            RoutingItem(
                rule_pk=rule.id,
                study_instance_uid=arrival.study_instance_uid,
                destination_node_pk=rule.destination_node_pk,
                state="queued",
                attempts=0,
                next_attempt_at=now,
                last_error="",
                created_at=now,
                updated_at=now,
            )
        )
        LOGGER.info("routing: study %s queued by rule %s", arrival.study_instance_uid, rule.name)
    elif item.state in ("sent", "failed") and arrival.updated_at > item.updated_at - SETTLE:
        # New instances since it was sent (SETTLE covers ingest's stamp-to-commit lag).
        requeue(item, now)
        LOGGER.info("routing: study %s grew, queued again (%s)", item.study_instance_uid, rule.name)


def queue_arrivals(db: Database, arrivals: list[Arrival], now: datetime) -> int:
    """Queue each arrival for every enabled rule it matches (created before it arrived).

    The rules are matched on a read snapshot; a write transaction is opened only when
    something matched. Returns the number of (rule, study) matches.
    """
    if not arrivals:
        return 0
    with db.reader() as session:
        rules = session.execute(
            select(RoutingRule, Node.ae_title)
            .join(Node, Node.id == RoutingRule.destination_node_pk)
            .where(RoutingRule.enabled.is_(True))
        ).all()
    matches = [
        (rule, arrival)
        for rule, destination in rules
        for arrival in arrivals
        if rule.created_at <= arrival.updated_at
        and destination not in arrival.senders  # never back to where it came from
        and study_matches(json.loads(rule.conditions or "{}"), arrival.series)
    ]
    if matches:
        with db.session() as session:
            for rule, arrival in matches:
                _enqueue(session, rule, arrival, now)
    return len(matches)


class RoutingScan:
    """The ``routing-scan`` task: arrivals since the last scan become queue items."""

    def __init__(self) -> None:
        self.watch = ArrivalWatch("routing-scan")

    def run(self, ctx: WorkerContext) -> None:
        """One scan (see the module docstring)."""
        now = _now()
        since = self.watch.window_start(ctx.settings, now)
        with ctx.database.reader() as session:
            arrivals = read_arrivals(session, since)
        versions = {a.study_instance_uid: a.updated_at for a in arrivals}
        fresh = set(self.watch.unseen(versions))
        queue_arrivals(ctx.database, [a for a in arrivals if a.study_instance_uid in fresh], now)
        self.watch.handled(ctx.settings, now, since, versions)


register(PeriodicTask("routing-scan", interval=lambda s: SCAN_INTERVAL, run=RoutingScan().run))
register(PeriodicTask("routing-send", interval=lambda s: SEND_INTERVAL, run=RoutingSend().run))
