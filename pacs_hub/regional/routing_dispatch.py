"""The sending side of the routing queue: due items out by C-STORE, with retries.

The ``routing-send`` task (registered by :mod:`pacs_hub.regional.routing`) claims
``queued`` items whose next attempt is due and whose study has been quiet for
:data:`SETTLE` (no instance arrived for that long), marks them ``sending`` with one
more attempt, and sends the study's stored instances unchanged
(:mod:`~.forwarding`). Up to :data:`SENDERS` destinations are served at once, one
item per destination at a time, so a destination that hangs until its timeouts
never holds up the others.

After a send: every instance accepted -> ``sent`` (or ``queued`` again at once when
instances arrived during the send); otherwise ``queued`` for a retry after
``routing_retry_base * 2**(attempts - 1)`` seconds, or ``failed`` with the reason
once ``routing_max_attempts`` tries were made. An item left ``sending`` by a stopped
hub is queued again at the next start (:func:`recover_interrupted`).
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, or_, select, update

from pacs_hub.regional.forwarding import Destination, SendResult, send_instances
from pacs_hub.regional.worker import WorkerContext
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Node, RoutingItem, RoutingRule, Study
from pacs_hub.storage.query import Level
from pacs_hub.storage.retrieval import RetrieveRequest, select_instances

LOGGER = logging.getLogger(__name__)
STATES = ("queued", "sending", "sent", "failed")
SETTLE = timedelta(seconds=3)
"""A study is sent once no instance of it arrived for this long."""
SENDERS = 4
"""Destinations served at the same time."""
MAX_BACKOFF_EXPONENT = 20
POLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Claim:
    """An item the sender took: what to send, where, and the study version it saw."""

    item_id: int
    study_instance_uid: str
    study_version: datetime
    destination: Destination
    destination_pk: int = 0


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def requeue(item: RoutingItem, now: datetime) -> None:
    """Put ``item`` back in the queue, due now, with its attempts reset."""
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


def _due(now: datetime, busy: frozenset[int]) -> Select[RoutingItem, datetime, Node]:
    stmt = (
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
    )
    if busy:
        stmt = stmt.where(RoutingItem.destination_node_pk.not_in(sorted(busy)))
    return stmt.order_by(RoutingItem.next_attempt_at, RoutingItem.id).limit(1)


def claim_next(db: Database, busy: frozenset[int] = frozenset()) -> Claim | None:
    """Take the next due item (state ``sending``, one more attempt), or None.

    Items for the destinations in ``busy`` (node primary keys) are left for later.
    """
    while True:
        now = _now()
        with db.reader() as session:  # most turns find nothing: no write lock for that
            if session.execute(_due(now, busy)).first() is None:
                return None
        with db.session() as session:
            # PostgreSQL: a second hub replica skips the row this one takes (SQLite
            # serialises writers already, FOR UPDATE renders as nothing there).
            locked = _due(now, busy).with_for_update(skip_locked=True, of=RoutingItem)
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
                node.id,
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
                requeue(item, now)  # instances arrived while sending: send it whole again
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
        with ThreadPoolExecutor(SENDERS, thread_name_prefix="hub-routing-send") as pool:
            running: dict[Future[str], int] = {}
            while not ctx.stop.is_set():
                claim = None
                if len(running) < SENDERS:
                    claim = claim_next(ctx.database, frozenset(running.values()))
                if claim is not None:
                    running[pool.submit(deliver, ctx, claim)] = claim.destination_pk
                    continue
                if not running:
                    return
                # Wake up now and then: items for other destinations may fall due
                # while a send hangs until its timeouts.
                done, _ = wait(running, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    del running[future]
                    future.result()  # deliver never raises but for a bug: let the task log it
