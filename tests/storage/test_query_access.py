"""The access policy inside the C-FIND / QIDO-RS SQL (storage.query.Access): the same
studies as the per-study decision, totals that never count a hidden study, and
patients listed only with a visible study, their counters counting visible ones only."""

from __future__ import annotations

from sqlalchemy import update

from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, Node, Patient, Study
from pacs_hub.storage.query import Level, count_matches, find_patients, find_studies, parse_query
from pacs_hub.trust.access import RemoteAnswer, query_access, remote_visible
from pacs_hub.trust.policy import Policy
from pacs_hub.trust.principal import ANONYMOUS, Principal, Purpose, Role
from tests.storage.test_policy import NOW, both, consent, policy, staff, world

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


def _remote(database: Database, policy: Policy, principal: Principal, **kw: str) -> bool:
    answer = RemoteAnswer(
        (kw.get("node", "PACS_A"),),
        kw.get("study", "9.9.9"),
        kw.get("patient_id", ""),
        kw.get("issuer", ""),
    )
    with database.read_connection() as conn:
        return remote_visible(policy, conn, principal, Purpose.CARE, answer)


def test_remote_results_by_the_same_rules(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    with database.session() as s:  # A's PACS sends IDs of its default issuer; C's name theirs
        s.execute(
            update(Establishment).where(Establishment.code == "A").values(default_issuer="ISS-A")
        )
        for local, issuer in (("P-a", "ISS-A"), ("Q-c", "ISS-C")):
            s.execute(
                update(Patient)
                .where(Patient.patient_id == local)
                .values(issuer_of_patient_id=issuer)
            )
        for code in "AC":
            s.add(
                Node(
                    ae_title=f"PACS_{code}",
                    host="h",
                    port=104,
                    created_at=NOW,
                    establishment_pk=world[code],
                )
            )
    a, c = staff(world, "A"), staff(world, "C")
    admin = Principal(a.kind, "admin", frozenset({Role.REGIONAL_ADMIN}))
    # the answering PACS is the caller's establishment's: the establishment rule
    assert _remote(database, policy, a)
    # a study the hub holds: its own decision (staff of C and P's study 1.1: no)
    assert not _remote(database, policy, c, study="1.1")
    assert _remote(database, policy, a, study="1.2", node="PACS_C")  # P's care team
    # a patient the hub knows: the per-patient decision (Q's identity, at C)
    assert _remote(database, policy, c, node="PACS_A", patient_id="Q-c", issuer="ISS-C")
    assert not _remote(database, policy, a, node="PACS_C", patient_id="Q-c", issuer="ISS-C")
    assert not _remote(database, policy, c, node="PACS_A", patient_id="Q-c")  # not ISS-A's
    assert not _remote(database, policy, c, node="PACS_A", patient_id="P-a")
    consent(database, world, "P", "granted")
    assert _remote(database, policy, c, node="PACS_A", patient_id="P-a")
    # an unknown patient: only for those who see everything
    assert not _remote(database, policy, c, node="PACS_A", patient_id="nobody")
    assert _remote(database, policy, admin, node="PACS_A", patient_id="nobody")
    assert not _remote(database, policy, ANONYMOUS, node="PACS_A", patient_id="Q-c")
