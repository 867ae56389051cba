"""The routing queue's state machine in-process, on SQLite and on a real PostgreSQL server:
scan -> queued -> sending -> retry with backoff / failed / sent -> queued again on growth.
No peer is contacted: sends are recorded with :func:`record_result` as a sender would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from pacs_hub.config import Settings
from pacs_hub.ingest import Ingestor
from pacs_hub.regional import routing, routing_dispatch
from pacs_hub.regional.establishments import create_establishment
from pacs_hub.regional.forwarding import SendResult
from pacs_hub.regional.nodes import add_node
from pacs_hub.regional.routing_rules import create_rule
from pacs_hub.regional.worker import WorkerContext
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import RoutingItem, Study
from tests.regional.study_factory import make_study
from tests.storage.conftest import postgres_server  # noqa: F401 (fixture)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkerContext]:
    """A migrated index with establishment A, its CT, a destination and one rule."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    settings = Settings(data_dir=tmp_path / "data", routing_retry_base=2.0, routing_max_attempts=3)
    db = Database(url)
    create_establishment(db, "HOSP_A", "Hospital A", "ISSUER_A")
    add_node(db, "A_CT", "127.0.0.1", 104, "HOSP_A", role="modality")
    add_node(db, "READER", "127.0.0.1", 11113, role="destination")
    create_rule(db, "ct-of-a", {"establishment": "HOSP_A", "modality": "CT"}, "READER")
    yield WorkerContext(settings, db, BlobStore(settings.data_dir), threading.Event())
    db.dispose()


def ingest(ctx: WorkerContext, files: list[Path], ae: str = "A_CT") -> None:
    ingestor = Ingestor(ctx.database, ctx.blobs)
    for f in files:
        ingestor.ingest(f.read_bytes(), received_from_ae=ae)


def stamp_study(ctx: WorkerContext, uid: str, ago: float = 10) -> None:
    """Set when the study's last instance came: ``ago`` seconds before now."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with ctx.database.session() as session:
        session.execute(
            update(Study)
            .where(Study.study_instance_uid == uid)
            .values(updated_at=now - timedelta(seconds=ago))
        )


def only_item(ctx: WorkerContext, uid: str) -> routing.QueueRecord:
    items = routing.list_queue(ctx.database, study=uid)
    assert len(items) == 1
    return items[0]


def test_queue_states_backoff_failure_and_growth(ctx: WorkerContext, tmp_path: Path) -> None:
    scan = routing.RoutingScan()
    uid, files = make_study(tmp_path / "ct", patient_id="P1", modality="CT")
    mr_uid, mr_files = make_study(tmp_path / "mr", patient_id="P1", modality="MR")
    ingest(ctx, files + mr_files)
    scan.run(ctx)
    scan.run(ctx)  # twice: still one item
    item = only_item(ctx, uid)
    assert (item.state, item.attempts, item.rule, item.destination) == (
        "queued",
        0,
        "ct-of-a",
        "READER",
    )
    assert routing.list_queue(ctx.database, study=mr_uid) == []

    stamp_study(ctx, uid, ago=0)
    assert routing_dispatch.claim_next(ctx.database) is None  # not quiet yet (SETTLE)
    stamp_study(ctx, uid)
    claim = routing_dispatch.claim_next(ctx.database)
    assert claim is not None and claim.study_instance_uid == uid
    assert claim.destination.ae_title == "READER"
    assert routing_dispatch.claim_next(ctx.database) is None  # taken: 'sending'
    assert only_item(ctx, uid).state == "sending"

    assert (
        routing_dispatch.record_result(ctx, claim, SendResult(0, 3, "READER refused")) == "queued"
    )
    item = only_item(ctx, uid)
    delay = item.next_attempt_at - item.updated_at
    assert item.attempts == 1 and item.last_error == "READER refused"
    assert timedelta(seconds=1.9) <= delay <= timedelta(seconds=2.1)  # retry base
    assert routing_dispatch.claim_next(ctx.database) is None  # not due yet

    for attempt, base in ((2, 4.0), (3, None)):
        with ctx.database.session() as session:
            session.execute(update(RoutingItem).values(next_attempt_at=item.created_at))
        claim = routing_dispatch.claim_next(ctx.database)
        assert claim is not None
        state = routing_dispatch.record_result(ctx, claim, SendResult(0, 3, f"try {attempt}"))
        item = only_item(ctx, uid)
        assert item.attempts == attempt
        if base is not None:
            assert state == "queued"
            assert item.next_attempt_at - item.updated_at >= timedelta(seconds=base - 0.1)
    assert (item.state, item.last_error) == ("failed", "try 3")

    # A retry by hand, then a success; then the study grows: queued again.
    assert routing.retry_item(ctx.database, item.id).state == "queued"
    claim = routing_dispatch.claim_next(ctx.database)
    assert claim is not None
    assert routing_dispatch.record_result(ctx, claim, SendResult(3, 0)) == "sent"
    scan.run(ctx)
    assert only_item(ctx, uid).state == "sent"  # nothing new: stays sent
    _, more = make_study(tmp_path / "more", patient_id="P1", modality="CT", study_uid=uid)
    ingest(ctx, more)
    scan.run(ctx)
    again = only_item(ctx, uid)
    assert (again.id, again.state, again.attempts) == (item.id, "queued", 0)


def test_interrupted_send_is_queued_again_and_growth_during_send_resends(
    ctx: WorkerContext, tmp_path: Path
) -> None:
    uid, files = make_study(tmp_path / "ct", patient_id="P2", modality="CT")
    ingest(ctx, files)
    routing.RoutingScan().run(ctx)
    stamp_study(ctx, uid)
    claim = routing_dispatch.claim_next(ctx.database)
    assert claim is not None
    assert routing_dispatch.recover_interrupted(ctx.database) == 1  # as at a hub start
    assert only_item(ctx, uid).state == "queued"
    assert routing_dispatch.record_result(ctx, claim, SendResult(3, 0)) == "queued"  # stale claim

    claim = routing_dispatch.claim_next(ctx.database)
    assert claim is not None
    _, more = make_study(tmp_path / "more", patient_id="P2", modality="CT", study_uid=uid)
    ingest(ctx, more)  # arrives while the first ones are being sent
    assert routing_dispatch.record_result(ctx, claim, SendResult(3, 0)) == "queued"
    assert only_item(ctx, uid).attempts == 0


def test_study_sent_by_a_node_of_no_establishment_is_not_queued(
    ctx: WorkerContext, tmp_path: Path
) -> None:
    uid, files = make_study(tmp_path / "ct", patient_id="P3", modality="CT")
    ingest(ctx, files, ae="SOMEONE")  # not a node of A
    routing.RoutingScan().run(ctx)
    assert routing.list_queue(ctx.database, study=uid) == []
