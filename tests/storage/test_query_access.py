"""The access policy inside the C-FIND / QIDO-RS SQL (storage.query.Access): the same
studies as the per-study decision, totals that never count a hidden study, and
patients listed only with a visible study, their counters counting visible ones only."""

from __future__ import annotations

from sqlalchemy import update

from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Study
from pacs_hub.storage.query import Level, count_matches, find_patients, find_studies, parse_query
from pacs_hub.trust.access import query_access
from pacs_hub.trust.policy import Policy
from pacs_hub.trust.principal import ANONYMOUS, Principal, Purpose, Role
from tests.storage.test_policy import both, consent, policy, staff, world

__all__ = ["policy", "world"]


def listed(database: Database, policy: Policy, principal: Principal) -> tuple[set[str], int]:
    with database.reader() as session:
        access = query_access(policy, session.connection(), principal, Purpose.CARE)
        query = parse_query({}).restricted(access)
        rows = find_studies(session, query)
        total = count_matches(session, Level.STUDY, query)
    return {r.study_instance_uid for r in rows}, total


def patients(database: Database, policy: Policy, principal: Principal) -> dict[str, int]:
    with database.reader() as session:
        access = query_access(policy, session.connection(), principal, Purpose.CARE)
        query = parse_query({}).restricted(access)
        total = count_matches(session, Level.PATIENT, query)
        rows = find_patients(session, query)
    assert total == len(rows)
    return {r.patient_id: r.num_studies for r in rows}


def test_query_matches_decisions(database: Database, world: dict[str, int], policy: Policy) -> None:
    with database.session() as s:
        s.execute(update(Study).values(num_series=1, num_instances=2))
    for principal in (staff(world, "A"), staff(world, "C"), ANONYMOUS):
        expected = both(database, policy, principal)
        uids, total = listed(database, policy, principal)
        assert uids == expected and total == len(expected)
    consent(database, world, "P", "refused")
    assert listed(database, policy, staff(world, "A")) == ({"1.1"}, 1)


def test_patient_level(database: Database, world: dict[str, int], policy: Policy) -> None:
    with database.session() as s:
        s.execute(update(Study).values(num_series=1, num_instances=2))
    # counters as stored: P-a and P-b one study each; staff of C sees Q only
    assert patients(database, policy, staff(world, "C")) == {"Q-c": 1}
    assert patients(database, policy, ANONYMOUS) == {}
    admin = Principal(staff(world, "A").kind, "admin", frozenset({Role.REGIONAL_ADMIN}))
    assert patients(database, policy, admin) == {"P-a": 0, "P-b": 0, "Q-c": 0}
