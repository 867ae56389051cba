"""The backup state file, C-FIND windows and the rate limit, without peers."""

from __future__ import annotations

import json
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacs_hub.backup import state
from pacs_hub.backup.backfill import RateLimit, progress_of
from pacs_hub.backup.remote import windows
from pacs_hub.config import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def test_update_is_atomic_and_serialised(settings: Settings) -> None:
    state.update(settings, "H1", lambda s: s.update(count=0), create=True)

    def bump() -> None:
        for _ in range(20):
            state.update(settings, "H1", lambda s: s.update(count=s["count"] + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state.load(settings, "H1")["count"] == 80
    assert [p.name for p in (settings.data_dir / "backup").iterdir() if ".tmp" in p.name] == []


def test_not_enrolled_and_bad_codes_are_clear(settings: Settings) -> None:
    with pytest.raises(state.NotEnrolled, match="'H9' is not enrolled"):
        state.load(settings, "H9")
    with pytest.raises(state.NotEnrolled, match="expected 1-32 of"):
        state.load(settings, "../etc")


def test_exclusive_lets_one_holder_in(settings: Settings) -> None:
    with (
        state.exclusive(settings, "H1", "restore") as first,
        state.exclusive(settings, "H1", "restore") as second,
    ):
        assert first and not second


def test_outage_marks_are_kept_once_in_order(settings: Settings) -> None:
    for uid in ("1.2.3", "1.2.4", "1.2.3"):
        state.mark_outage(settings, "H1", uid)
    assert state.outage_instances(settings, "H1") == ["1.2.3", "1.2.4"]


@given(
    st.dates(date(1990, 1, 1), date(2030, 1, 1)),
    st.integers(0, 3000),
    st.integers(1, 400),
)
def test_windows_cover_every_day_once(first: date, span: int, days: int) -> None:
    last = first + timedelta(days=span)
    covered = []
    for start, end in windows(first.strftime("%Y%m%d"), last.strftime("%Y%m%d"), days):
        a = date(int(start[:4]), int(start[4:6]), int(start[6:]))
        b = date(int(end[:4]), int(end[4:6]), int(end[6:]))
        assert a <= b and (b - a).days < days
        covered += [a + timedelta(days=n) for n in range((b - a).days + 1)]
    assert covered == [first + timedelta(days=n) for n in range(span + 1)]


def test_rate_limit_spaces_instances() -> None:
    limit = RateLimit(200.0)
    start = time.monotonic()
    for _ in range(5):
        limit.acquire(20)  # 100 instances at 200/s: at least 0.4 s after the first
    assert time.monotonic() - start >= 0.39


def test_progress_estimates_bytes_from_what_was_pulled() -> None:
    current = {
        "backfill": {
            "state": "running",
            "studies": {
                "1": {"n": 10, "done": True, "bytes": 1000},
                "2": {"n": 30, "done": False},
            },
        }
    }
    progress = progress_of("H1", current)
    assert (progress.studies_done, progress.studies_total) == (1, 2)
    assert (progress.instances_done, progress.instances_total) == (10, 40)
    assert progress.bytes_total == 4000


def test_returned_outage_marks_are_forgotten(settings: Settings) -> None:
    for uid in ("1.2.3", "1.2.4", "1.2.5"):
        state.mark_outage(settings, "H1", uid)
    assert state.clear_outage(settings, "H1", {"1.2.3", "1.2.5", "9.9"}) == 2
    assert state.outage_instances(settings, "H1") == ["1.2.4"]
    assert state.clear_outage(settings, "H1", {"1.2.3"}) == 0  # twice: nothing more


def test_study_outcomes_are_appended_not_rewritten_and_a_torn_line_is_ignored(
    settings: Settings,
) -> None:
    studies = {str(n): {"n": 2, "done": False} for n in range(3)}
    state.update(settings, "H1", lambda s: s.update(backfill={"studies": studies}), create=True)
    path = settings.data_dir / "backup" / "H1.json"
    before = (path.stat().st_ino, path.read_bytes())
    state.record(settings, "H1", "backfill", "0", {"done": True, "bytes": 10}, {"pulled": 2})
    state.record(settings, "H1", "backfill", "1", {"done": True, "bytes": 20}, {"pulled": 2})
    state.record(settings, "H1", "backfill", "9", {"done": True})  # not in this run: ignored
    assert (path.stat().st_ino, path.read_bytes()) == before  # the state file untouched
    journal = settings.data_dir / "backup" / "H1.journal"
    with journal.open("ab") as fp:  # a kill -9 in the middle of a line
        fp.write(b'{"s":"backfill","u":"2","v":{"done":tr')
    run = state.load(settings, "H1")["backfill"]
    assert [run["studies"][u]["done"] for u in "012"] == [True, True, False]
    assert run["pulled"] == 4 and "9" not in run["studies"]
    state.update(settings, "H1", lambda s: None)  # folds the journal and empties it
    assert journal.stat().st_size == 0
    assert state.load(settings, "H1")["backfill"] == run


def test_a_large_journal_is_folded_into_the_state(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "COMPACT_BYTES", 200)
    studies = {str(n): {"done": False} for n in range(10)}
    state.update(settings, "H1", lambda s: s.update(restore={"studies": studies}), create=True)
    for n in range(10):
        state.record(settings, "H1", "restore", str(n), {"done": True, "sent": n})
    journal = settings.data_dir / "backup" / "H1.journal"
    assert journal.stat().st_size < 200
    on_disk = json.loads((settings.data_dir / "backup" / "H1.json").read_text())
    assert sum(1 for s in on_disk["restore"]["studies"].values() if s["done"]) >= 3
    final = state.load(settings, "H1")["restore"]["studies"]
    assert [final[str(n)]["sent"] for n in range(10)] == list(range(10))
