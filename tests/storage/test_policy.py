"""The access policy on a real index (SQLite and PostgreSQL): every rule, and the query
predicate agreeing with the per-study decision for every caller (no leak by listing)."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pacs_hub.config import Settings
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, Patient, RegionalPatient, Study
from pacs_hub.trust.models import Consent, ShareGrant, User
from pacs_hub.trust.policy import AccessDenied, Policy
from pacs_hub.trust.principal import ANONYMOUS, SYSTEM, Action, Kind, Principal, Purpose, Role

NOW = datetime.now(UTC).replace(tzinfo=None)


def _add(session, obj):  # type: ignore[no-untyped-def]
    session.add(obj)
    session.flush()
    return obj


@pytest.fixture
def world(database: Database) -> dict[str, int]:
    """Establishments A, B, C; patient P (studies at A and B), patient Q (study at C only)."""
    ids: dict[str, int] = {}
    with database.session() as s:
        for code in "ABC":
            ids[code] = _add(s, Establishment(code=code, name=code, created_at=NOW)).id
        for name in ("P", "Q"):
            ids[name] = _add(s, RegionalPatient(regional_id=name, created_at=NOW)).id
        for local, regional in (("P-a", "P"), ("P-b", "P"), ("Q-c", "Q")):
            ids[local] = _add(
                s,
                Patient(
                    patient_id=local, issuer_of_patient_id="", regional_patient_pk=ids[regional]
                ),
            ).id
        studies = (("1.1", "P-a", "A"), ("1.2", "P-b", "B"), ("1.3", "Q-c", "C"))
        for uid, local, est in studies:
            _add(
                s,
                Study(
                    study_instance_uid=uid,
                    patient_pk=ids[local],
                    establishment_pk=ids[est],
                    created_at=NOW,
                    updated_at=NOW,
                ),
            )
        ids["doctor"] = _add(s, User(username="dr", rpps="10101", created_at=NOW)).id
    return ids


def staff(ids: dict[str, int], est: str, role: Role = Role.RADIOLOGIST) -> Principal:
    return Principal(Kind.USER, f"staff-{est}", frozenset({role}), frozenset({ids[est]}))


def consent(database: Database, ids: dict[str, int], who: str, status: str, **kw: str) -> None:
    with database.session() as s:
        s.add(
            Consent(
                regional_pk=ids[who],
                purpose=kw.get("purpose", "regional-sharing"),
                doctor_ref=kw.get("doctor", ""),
                status=status,
                method="in-person",
                recorded_by="staff-A",
                proof_sha256=hashlib.sha256(b"text").hexdigest(),
                at=NOW,
            )
        )


def visible(database: Database, policy: Policy, principal: Principal, **kw: str) -> set[str]:
    with database.read_connection() as conn:
        clause = policy.visible_studies(conn, principal, kw.pop("purpose", Purpose.CARE), **kw)  # type: ignore[arg-type]
        stmt = select(Study.study_instance_uid).join(Patient, Patient.id == Study.patient_pk)
        if clause is not None:
            stmt = stmt.where(clause)
        return {str(u) for (u,) in conn.execute(stmt)}


def allowed(database: Database, policy: Policy, principal: Principal, **kw: str) -> set[str]:
    out = set()
    purpose = kw.pop("purpose", Purpose.CARE)
    with database.read_connection() as conn:
        for uid in ("1.1", "1.2", "1.3"):
            d = policy.decide(conn, principal, Action.RETRIEVE, purpose, study_uid=uid, **kw)  # type: ignore[arg-type]
            if d.allowed:
                out.add(uid)
    return out


@pytest.fixture
def policy() -> Policy:
    return Policy(Settings(auth_required=True))


def both(database: Database, policy: Policy, principal: Principal, **kw: str) -> set[str]:
    """What the caller may see, checked equal by decision and by query predicate."""
    by_decision = allowed(database, policy, principal, **dict(kw))
    by_query = visible(database, policy, principal, **dict(kw))
    assert by_decision == by_query, (principal.subject, by_decision, by_query)
    return by_decision


def test_establishment_and_care_team(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    # staff of A: their study 1.1, and P's study at B (care team); not Q's study at C
    assert both(database, policy, staff(world, "A")) == {"1.1", "1.2"}
    assert both(database, policy, staff(world, "C")) == {"1.3"}


def test_objection_limits_to_own_establishment(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    consent(database, world, "P", "refused")
    assert both(database, policy, staff(world, "A")) == {"1.1"}
    with database.read_connection() as conn:
        decision = policy.decide(
            conn, staff(world, "A"), Action.RETRIEVE, Purpose.CARE, study_uid="1.2"
        )
    assert decision.rule == "patient-objected"
    with pytest.raises(AccessDenied):
        decision.check()


def test_consent_opens_to_the_region_and_withdrawal_closes(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    assert both(database, policy, staff(world, "C")) == {"1.3"}
    consent(database, world, "P", "granted")
    assert both(database, policy, staff(world, "C")) == {"1.1", "1.2", "1.3"}
    consent(database, world, "P", "withdrawn")
    assert both(database, policy, staff(world, "C")) == {"1.3"}


def test_patients_see_only_their_own(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    patient = Principal(Kind.USER, "p", frozenset({Role.PATIENT}), regional_patient_pk=world["P"])
    assert both(database, policy, patient) == {"1.1", "1.2"}


def test_anonymous_sees_nothing_system_and_admin_everything(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    assert both(database, policy, ANONYMOUS) == set()
    assert both(database, policy, SYSTEM) == {"1.1", "1.2", "1.3"}
    admin = Principal(Kind.USER, "admin", frozenset({Role.REGIONAL_ADMIN}))
    assert both(database, policy, admin) == {"1.1", "1.2", "1.3"}


def test_nodes_need_the_permission(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    node = Principal(
        Kind.NODE,
        "PACS_C",
        establishments=frozenset({world["C"]}),
        node_permissions=frozenset({Action.QUERY, Action.RETRIEVE}),
    )
    assert both(database, policy, node) == {"1.3"}
    store_only = Principal(
        Kind.NODE,
        "CT_C",
        establishments=frozenset({world["C"]}),
        node_permissions=frozenset({Action.STORE}),
    )
    assert both(database, policy, store_only) == set()


def _grant(database: Database, ids: dict[str, int], **kw: object) -> tuple[int, str]:
    token = secrets.token_urlsafe(32)
    with database.session() as s:
        grant = _add(
            s,
            ShareGrant(
                token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                created_by_user_pk=ids["doctor"],
                recipient=str(kw.get("recipient", "")),
                regional_pk=ids["P"],
                study_uids=json.dumps(kw.get("uids", ["1.2"])),
                scope=str(kw.get("scope", "study")),
                purpose=str(kw.get("purpose", "named-doctor")),
                expires_at=NOW + timedelta(days=1) if not kw.get("expired") else NOW - timedelta(1),
                created_at=NOW,
            ),
        )
        return grant.id, token


def test_share_grants_for_a_named_doctor_and_a_link(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    doctor = Principal(
        Kind.USER, "gp", frozenset({Role.REFERRING_DOCTOR}), rpps="999", email="gp@example.org"
    )
    assert both(database, policy, doctor) == set()
    grant_pk, _token = _grant(database, world, recipient="999")
    assert both(database, policy, doctor) == set()  # no consent recorded: the share is void
    consent(database, world, "P", "granted", purpose="named-doctor", doctor="999")
    assert both(database, policy, doctor) == {"1.2"}
    link = Principal(Kind.SHARE, f"grant-{grant_pk}", share_grant_pk=grant_pk)
    assert both(database, policy, link) == {"1.2"}
    consent(database, world, "P", "withdrawn", purpose="named-doctor", doctor="999")
    assert both(database, policy, doctor) == set()
    assert both(database, policy, link) == set()


def test_expired_grant_and_break_glass(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    _grant(database, world, recipient="999", expired=True, scope="patient")
    consent(database, world, "P", "granted", purpose="named-doctor", doctor="999")
    doctor = Principal(Kind.USER, "gp", frozenset({Role.REFERRING_DOCTOR}), rpps="999")
    assert both(database, policy, doctor) == set()
    assert both(database, policy, doctor, purpose=Purpose.EMERGENCY) == set()  # no reason
    everything = {"1.1", "1.2", "1.3"}
    assert (
        both(database, policy, doctor, purpose=Purpose.EMERGENCY, reason="coma, ER") == everything
    )
    with database.read_connection() as conn:
        d = policy.decide(
            conn, doctor, Action.VIEW, Purpose.EMERGENCY, study_uid="1.1", reason="coma, ER"
        )
    assert d.break_glass and d.rule == "break-glass"


def test_unknown_study_and_policy_off(database: Database, world: dict[str, int]) -> None:
    policy = Policy(Settings(auth_required=True))
    with database.read_connection() as conn:
        d = policy.decide(conn, SYSTEM, Action.RETRIEVE, Purpose.CARE, study_uid="9.9")
        assert (d.allowed, d.rule) == (False, "not-found")
        off = Policy(Settings(auth_required=False))
        assert off.decide(conn, ANONYMOUS, Action.RETRIEVE, Purpose.CARE, study_uid="1.1").allowed
        assert off.visible_studies(conn, ANONYMOUS, Purpose.CARE) is None


def test_audit_chain_detects_edit_and_deletion(database: Database) -> None:
    from sqlalchemy import text

    from pacs_hub.trust import audit

    with database.engine.begin() as conn:
        for n in range(5):
            audit.record(conn, audit.AuditEntry("user", f"user:u{n}", "retrieve", "allow"))
    with database.read_connection() as conn:
        assert audit.verify(conn) == []
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor_id = 'user:x' WHERE id = 3"))
    with database.read_connection() as conn:
        assert [b.entry_id for b in audit.verify(conn)] == [3]
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor_id = 'user:u2' WHERE id = 3"))
        conn.execute(text("DELETE FROM audit_events WHERE id = 5"))
    with database.read_connection() as conn:
        assert [b.problem for b in audit.verify(conn)] == ["the newest entries were removed"]


def test_break_glass_overrides_an_objection_in_both_forms(
    database: Database, world: dict[str, int], policy: Policy
) -> None:
    consent(database, world, "P", "refused")
    radiologist_c = staff(world, "C")
    assert both(database, policy, radiologist_c) == {"1.3"}
    emergency = {"purpose": Purpose.EMERGENCY, "reason": "unconscious, ER"}
    assert both(database, policy, radiologist_c, **emergency) == {"1.1", "1.2", "1.3"}  # type: ignore[arg-type]
