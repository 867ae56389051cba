"""Single-use sign-in secrets in the index (pacs_hub.trust.grants), as two HTTP
processes see them: two engines on one SQLite file."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import select

from pacs_hub.storage.database import Database
from pacs_hub.trust.grants import CODE, LOGIN, PendingGrants
from pacs_hub.trust.models import PendingGrant


def _two(tmp_path: Path) -> tuple[PendingGrants, PendingGrants]:
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    first = Database(url)
    return PendingGrants(first), PendingGrants(Database(url, run_migrations=False))


def test_a_secret_handed_out_by_one_process_is_taken_once_by_another(tmp_path: Path) -> None:
    here, there = _two(tmp_path)
    secret = here.put(CODE, {"username": "rad", "nonce": "n"}, 60)
    assert len(secret) >= 43  # 256 random bits, URL-safe
    with here.database.reader() as session:
        stored = session.scalars(select(PendingGrant.secret_hash)).all()
    assert stored and secret not in stored  # only its hash is kept
    assert there.take(CODE, secret) == {"username": "rad", "nonce": "n"}
    assert there.take(CODE, secret) is None
    assert here.take(CODE, secret) is None


def test_wrong_kind_expired_or_unknown_secrets_give_nothing(tmp_path: Path) -> None:
    grants, _ = _two(tmp_path)
    login = grants.put(LOGIN, {"next_url": "/"}, 60)
    assert grants.take(CODE, login) is None  # a sign-in state is not a code
    assert grants.take(LOGIN, login) is None  # and it was used up by the attempt
    expired = grants.put(CODE, {"username": "rad"}, -1)
    assert grants.take(CODE, expired) is None
    assert grants.take(CODE, "") is None and grants.take(CODE, "nope") is None


def test_expired_rows_are_pruned_when_a_new_secret_is_handed_out(tmp_path: Path) -> None:
    grants, _ = _two(tmp_path)
    grants.put(CODE, {"username": "a"}, -1)
    grants.put(CODE, {"username": "b"}, -1)
    grants.put(CODE, {"username": "c"}, 60)
    with grants.database.reader() as session:
        assert len(session.scalars(select(PendingGrant.secret_hash)).all()) == 1


def _take_at_once(grants: tuple[PendingGrants, ...], secret: str) -> list[object]:
    results: list[object] = []
    start = threading.Barrier(len(grants))

    def take(one: PendingGrants) -> None:
        start.wait()
        results.append(one.take(CODE, secret))

    threads = [threading.Thread(target=take, args=(g,)) for g in grants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_processes_taking_one_secret_at_once_get_it_once(tmp_path: Path) -> None:
    here, there = _two(tmp_path)
    for _ in range(20):
        secret = here.put(CODE, {"username": "rad"}, 60)
        results = _take_at_once((here, there), secret)
        assert sorted(map(str, results)) == ["None", "{'username': 'rad'}"]
