"""The routing queue: forward arriving studies to the nodes their rules name (issue 5).

Two background tasks (:mod:`pacs_hub.regional.worker`) work on ``routing_queue``:

* ``routing-scan`` notices studies that arrived or grew (:mod:`~.arrivals`), reads
  what the rules look at (:mod:`~.routing_rules`: sending establishment, modality,
  body part, station of each series) and queues one item per matching enabled rule
  (one row per rule and study), unless the destination is a node that sent some of
  the study (no ping-pong). A study that gets new instances after it was sent,
  or after it failed, is queued again and sent whole again. Studies the hub pulled
  from a PACS itself (a retrieve job exists) are not arrivals and are not routed.
* ``routing-send`` takes due items, one at a time, once their study has been quiet
  for :data:`SETTLE` seconds, and sends the study's stored instances unchanged by
  C-STORE (:mod:`~.forwarding`). A failure is retried after
  ``routing_retry_base * 2**(attempt - 1)`` seconds, up to ``routing_max_attempts``
  tries, then the item is ``failed`` with the reason.

States: ``queued`` -> ``sending`` -> ``sent`` | ``queued`` (retry) | ``failed``. The
queue is rows in the index, so it survives a restart; an item left ``sending`` by a
crash is queued again when the hub starts.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Select, or_, select, update
from sqlalchemy.orm import Session

from pacs_hub.errors import HubError
from pacs_hub.regional.arrivals import ArrivalWatch
from pacs_hub.regional.forwarding import Destination, SendResult, send_instances
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
from pacs_hub.storage.query import Level
from pacs_hub.storage.retrieval import RetrieveRequest, select_instances

LOGGER = logging.getLogger(__name__)
STATES = ("queued", "sending", "sent", "failed")
SETTLE = timedelta(seconds=3)
"""A study is sent once no instance of it arrived for this long."""
SCAN_INTERVAL = 1.0
SEND_INTERVAL = 1.0
MAX_BACKOFF_EXPONENT = 20


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


@dataclass(frozen=True, slots=True)
class Claim:
    """An item the sender took: what to send, where, and the study version it saw."""

    item_id: int
    study_instance_uid: str
    study_version: datetime
    destination: Destination


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
        _requeue(item, _now())
        return _queue_record(session, item)


def _requeue(item: RoutingItem, now: datetime) -> None:
    item.state, item.attempts, item.last_error = "queued", 0, ""
    item.next_attempt_at = item.updated_at = now


def recover_interrupted(db: Database) -> int:
    """Queue again the items a stopped hub left ``sending``; return how many."""
    with db.session() as session:
        result = session.execute(
            update(RoutingItem)
            .where(RoutingItem.state == "sending")
            .values(state="queued", updated_at=_now())
        )
        count = int(result.rowcount)  # type: ignore[attr-defined]
    if count:
        LOGGER.info("routing: %d item(s) interrupted while sending, queued again", count)
    return count


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
        _requeue(item, now)
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


# -- routing-send: queue items -> C-STORE ---------------------------------------------


def _due(now: datetime) -> Select[RoutingItem, datetime, Node]:
    return (
        select(RoutingItem, Study.updated_at, Node)
        .join(RoutingRule, RoutingRule.id == RoutingItem.rule_pk)
        .join(Node, Node.id == RoutingItem.destination_node_pk)
        .outerjoin(Study, Study.study_instance_uid == RoutingItem.study_instance_uid)
        .where(
            RoutingItem.state == "queued",
            RoutingItem.next_attempt_at <= now,
            RoutingRule.enabled.is_(True),
            or_(Study.updated_at.is_(None), Study.updated_at <= now - SETTLE),
        )
        .order_by(RoutingItem.next_attempt_at, RoutingItem.id)
        .limit(1)
    )


def claim_next(db: Database) -> Claim | None:
    """Take the next due item (state ``sending``, one more attempt), or None."""
    while True:
        now = _now()
        with db.reader() as session:  # most turns find nothing: no write lock for that
            if session.execute(_due(now)).first() is None:
                return None
        with db.session() as session:
            # PostgreSQL: a second hub replica skips the row this one takes (SQLite
            # serialises writers already, FOR UPDATE renders as nothing there).
            locked = _due(now).with_for_update(skip_locked=True, of=RoutingItem)
            row = session.execute(locked).first()
            if row is None:
                return None
            item, version, node = row
            item.updated_at = now
            if version is None:
                item.state, item.last_error = "failed", "the study is no longer stored"
                continue
            item.state, item.attempts = "sending", item.attempts + 1
            return Claim(
                item.id,
                item.study_instance_uid,
                version,
                Destination(node.ae_title, node.host, node.port),
            )


def _backoff(ctx: WorkerContext, attempts: int) -> timedelta:
    exponent = min(max(attempts - 1, 0), MAX_BACKOFF_EXPONENT)
    return timedelta(seconds=ctx.settings.routing_retry_base * 2**exponent)


def record_result(ctx: WorkerContext, claim: Claim, result: SendResult) -> str:
    """Write what a send achieved into the item; return its new state."""
    now = _now()
    with ctx.database.session() as session:
        item = session.get(RoutingItem, claim.item_id)
        if item is None or item.state != "sending":
            return item.state if item else "deleted"  # rule deleted or item retried meanwhile
        item.updated_at = now
        if result.ok:
            version = session.scalar(
                select(Study.updated_at).where(Study.study_instance_uid == claim.study_instance_uid)
            )
            if version != claim.study_version:
                _requeue(item, now)  # instances arrived while sending: send it whole again
            else:
                item.state, item.last_error = "sent", ""
        elif item.attempts >= ctx.settings.routing_max_attempts:
            item.state, item.last_error = "failed", result.error[:256]
        else:
            item.state, item.last_error = "queued", result.error[:256]
            item.next_attempt_at = now + _backoff(ctx, item.attempts)
        return item.state


def deliver(ctx: WorkerContext, claim: Claim) -> str:
    """Send the claimed study's stored instances and record the outcome."""
    request = RetrieveRequest(Level.STUDY, {Level.STUDY: (claim.study_instance_uid,)})
    with ctx.database.reader() as session:
        items = select_instances(session, ctx.blobs, request)
    if not items:
        result = SendResult(0, 1, "the study has no stored instance")
    else:
        try:
            result = send_instances(ctx.settings, claim.destination, items)
        except Exception as exc:  # the task's adapter: any failure becomes a retry
            LOGGER.exception("routing: sending %s failed", claim.study_instance_uid)
            result = SendResult(0, len(items), f"{type(exc).__name__}: {exc}")
    state = record_result(ctx, claim, result)
    LOGGER.info(
        "routing: study %s to %s: %s (%d sent, %d failed)",
        claim.study_instance_uid,
        claim.destination.ae_title,
        state,
        result.sent,
        result.failed,
    )
    return state


class RoutingSend:
    """The ``routing-send`` task: send every due item, then wait for the next turn."""

    def __init__(self) -> None:
        self._recovered: set[int] = set()

    def run(self, ctx: WorkerContext) -> None:
        """Recover interrupted items once per hub start, then drain the due items."""
        if id(ctx) not in self._recovered:
            recover_interrupted(ctx.database)
            self._recovered.add(id(ctx))
        while not ctx.stop.is_set():
            claim = claim_next(ctx.database)
            if claim is None:
                return
            deliver(ctx, claim)


register(PeriodicTask("routing-scan", interval=lambda s: SCAN_INTERVAL, run=RoutingScan().run))
register(PeriodicTask("routing-send", interval=lambda s: SEND_INTERVAL, run=RoutingSend().run))
