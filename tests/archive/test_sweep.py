"""The integrity sweep (pacs_hub/archive/sweep.py): the running hub reads its archive back,
finds a damaged instance, says it (log, ``pacs-hub archive status``, the admin API),
resumes after a restart and keeps to its rate."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from pacs_hub.archive import sweep
from pacs_hub.config import Settings
from pacs_hub.ingest import Ingestor
from pacs_hub.regional.worker import TASKS, WorkerContext
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database
from tests.archive.test_archive import flip_byte, store_files
from tests.conftest import DATA, start_hub, wait_until


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[Settings, Database, list[str]]]:
    """A data folder holding the shared charsets files, its index open."""
    settings = Settings(data_dir=tmp_path / "data", integrity_rate=1000.0)
    settings.data_dir.mkdir()
    database = Database(settings.index_url)
    uids = store_files(Ingestor(database, BlobStore(settings.data_dir)), [DATA / "charsets"])
    yield settings, database, uids
    database.dispose()


def context(settings: Settings, database: Database) -> WorkerContext:
    return WorkerContext(settings, database, BlobStore(settings.data_dir), threading.Event())


def key_of(database: Database, uid: str) -> str:
    with database.engine.connect() as conn:
        query = text("SELECT blob_key FROM instances WHERE sop_instance_uid = :u")
        return str(conn.execute(query, {"u": uid}).scalar_one())


def test_a_cycle_reads_every_instance_and_keeps_what_is_damaged(
    stored: tuple[Settings, Database, list[str]],
) -> None:
    settings, database, uids = stored
    key = key_of(database, uids[2])
    flip_byte(settings.data_dir, key)
    task = sweep.Sweep()
    task.run(context(settings, database))

    state = sweep.load(settings)  # saved, for status, the API and a restart
    assert state["cycles"] == 1 and "current" not in state
    last = state["last"]
    assert (last["checked"], last["damaged_count"]) == (len(uids), 1)
    assert [(d["sop_instance_uid"], d["blob"], d["problem"]) for d in last["damaged"]] == [
        (uids[2], key, "checksum mismatch")
    ]
    described = sweep.describe(settings)
    started = datetime.fromisoformat(last["started"].replace("Z", "+00:00"))
    assert described["next_cycle"] == (started + timedelta(days=30)).isoformat().replace(
        "+00:00", "Z"
    )
    task.run(context(settings, database))  # the next cycle is not due: nothing read
    assert sweep.load(settings) == state


def test_a_restarted_hub_resumes_the_cycle_where_it_stopped(
    stored: tuple[Settings, Database, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, database, uids = stored
    monkeypatch.setattr(sweep, "TURN_SECONDS", 0.0)  # one instance a turn
    first = sweep.Sweep()
    first.run(context(settings, database))
    first.run(context(settings, database))
    current = sweep.load(settings)["current"]
    assert current["checked"] == 2
    restarted = sweep.Sweep()  # a new hub process: the state comes from the file
    turns = 0
    while "last" not in sweep.load(settings):
        restarted.run(context(settings, database))
        turns += 1
    assert turns == len(uids) - 2 + 1  # the last turn finds nothing more and closes the cycle
    last = sweep.load(settings)["last"]
    assert (last["checked"], last["damaged_count"], last["started"]) == (
        len(uids),
        0,
        current["started"],
    )


def test_the_sweep_keeps_to_its_rate(stored: tuple[Settings, Database, list[str]]) -> None:
    settings, database, _ = stored
    total = sum(path.stat().st_size for path in (settings.data_dir / "blobs").rglob("*.pack"))
    slow = settings.model_copy(update={"integrity_rate": total / 1e6 / 1.0})  # ~1 s a cycle
    started = time.monotonic()
    sweep.Sweep().run(context(slow, database))
    elapsed = time.monotonic() - started
    assert sweep.load(slow)["cycles"] == 1
    assert elapsed >= 0.9  # the blobs are a little less than the packs


def test_the_running_hub_sweeps_and_says_what_it_found(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    hub = start_hub(data_dir, PACS_HUB_INTEGRITY_CYCLE_DAYS="0")  # cycle after cycle
    try:
        done = hub.cli("import", str(DATA / "charsets"), check=False)
        assert "stored" in done.stdout
        index = Database(f"sqlite:///{data_dir / 'index.sqlite3'}")
        try:
            uid = index_first_uid(index)
            key = key_of(index, uid)
        finally:
            index.dispose()
        flip_byte(data_dir, key)

        def found() -> bool:
            state = sweep.load(Settings(data_dir=data_dir))
            return bool((state.get("last") or {}).get("damaged_count"))

        wait_until(found, timeout=60, what="a sweep cycle finding the damaged blob")
        status = hub.cli("archive", "status", "--json", check=False)
        assert status.returncode == 1
        last = json.loads(status.stdout)["last"]
        assert [(d["sop_instance_uid"], d["problem"]) for d in last["damaged"]] == [
            (uid, "checksum mismatch")
        ]
        answer = httpx.get(f"{hub.url}/api/archive/integrity", timeout=10)
        assert answer.status_code == 200
        assert answer.json()["enabled"] is True
        assert uid in {d["sop_instance_uid"] for d in answer.json()["last"]["damaged"]}
        log = (data_dir.parent / f"hub-{hub.http_port}.log").read_text()
        assert f"integrity sweep: damaged blob {key} (checksum mismatch)" in log
    finally:
        hub.stop()


def index_first_uid(database: Database) -> str:
    with database.engine.connect() as conn:
        query = text("SELECT sop_instance_uid FROM instances ORDER BY id LIMIT 1")
        return str(conn.execute(query).scalar_one())


def test_a_rate_of_zero_turns_the_sweep_off(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, integrity_rate=0)
    task = next(t for t in TASKS if t.name == "archive-integrity")
    assert task.interval(settings) == 0
    assert sweep.describe(settings)["enabled"] is False
