"""Sharing studies with community doctors: capability links (issue 4, Sharing).

A professional who may view a study shares it (or several, or every study of the
regional patient) with a named doctor (RPPS-like id or e-mail) or as a plain link.
The hub checks the patient's ``named-doctor`` consent for that doctor (an unnamed
link uses the doctor ``''``: "the doctor to whom the link is handed"), or records it
at share time when the professional says the patient agreed in person, then creates
a :class:`~pacs_hub.trust.models.ShareGrant`.

The link ``/share/{token}`` carries a capability: ``secrets.token_urlsafe(32)``
(256 bits), stored only as its SHA-256, revocable, expiring (at most
``share_max_days``), optionally guarded by a one-time code given to the recipient
by another channel (stored hashed; five wrong codes in 15 minutes lock the link for
the rest of that window). Opening it sets the hub's session cookie (HttpOnly) with
a session token the embedded issuer signs, naming only the grant;
:func:`share_session_principal` turns it into a ``Principal(kind=share)`` that the
access policy confines to the grant, and only while the grant is unrevoked,
unexpired and the consent still granted (403 otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.orm import Session

from pacs_hub.errors import HubError
from pacs_hub.storage.models import Patient, Study
from pacs_hub.trust.audit import AuditEntry, record
from pacs_hub.trust.models import AuditEvent, ShareGrant, User
from pacs_hub.trust.policy import latest_consent
from pacs_hub.trust.principal import Kind, Principal, Role

SHARE_PATH = "/share/"
SHARE_PURPOSE = "named-doctor"
CODE_ATTEMPTS = 5
CODE_WINDOW = timedelta(minutes=15)
_RPPS = re.compile(r"^[0-9]{11,12}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


class InvalidShare(HubError):
    """A share request the hub does not accept (studies, recipient, expiry)."""

    http_status = 422
    title = "Invalid share"


class UnknownShare(HubError):
    """No share grant has this id (or the caller may not see it)."""

    http_status = 404
    title = "Unknown share"


@dataclass(frozen=True, slots=True)
class ShareRecord:
    """A share grant as its sender and the patient see it (never the token)."""

    id: int
    regional_pk: int
    study_uids: tuple[str, ...]
    scope: str
    purpose: str
    recipient: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    has_code: bool
    state: str
    """active, revoked, expired or consent-withdrawn."""


@dataclass(frozen=True, slots=True)
class NewShare:
    """A created grant with the secrets returned once: the link token and the code."""

    share: ShareRecord
    token: str
    code: str


def now() -> datetime:
    """Naive UTC, as the index stores times."""
    return datetime.now(UTC).replace(tzinfo=None)


def digest(secret: str) -> str:
    """SHA-256 (hex) of a token or code."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def normalise_recipient(recipient: str) -> str:
    """An RPPS (11 digits; an IDNPS, '8' + RPPS, is taken as its RPPS) or an e-mail
    (lower-cased); '' for a plain link. Signed-in doctors are matched on these."""
    value = recipient.strip()
    if len(value) == 12 and value.startswith("8") and value.isascii() and value.isdigit():
        return value[1:]
    if not value or _RPPS.match(value):
        return value
    if _EMAIL.match(value):
        return value.lower()
    raise InvalidShare(
        f"recipient {value[:40]!r} is neither an RPPS-like id (11-12 digits) nor an e-mail"
    )


def _state(conn: Connection, row: Any, at: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at <= at:
        return "expired"
    doctor = row.recipient if row.purpose == SHARE_PURPOSE else ""
    if latest_consent(conn, row.regional_pk, row.purpose, doctor) != "granted":
        return "consent-withdrawn"
    return "active"


def _record_of(conn: Connection, row: Any) -> ShareRecord:
    return ShareRecord(
        id=row.id,
        regional_pk=row.regional_pk,
        study_uids=tuple(json.loads(row.study_uids)),
        scope=row.scope,
        purpose=row.purpose,
        recipient=row.recipient,
        created_by=row.username,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        has_code=bool(row.one_time_code_sha256),
        state=_state(conn, row, now()),
    )


def _records(conn: Connection, where: list[object]) -> list[ShareRecord]:
    rows = conn.execute(
        select(*ShareGrant.__table__.c, User.username)
        .join(User, User.id == ShareGrant.created_by_user_pk)
        .where(*where)  # type: ignore[arg-type]
        .order_by(ShareGrant.id.desc())
    ).all()
    return [_record_of(conn, row) for row in rows]


def get_share(conn: Connection, share_id: int) -> ShareRecord:
    """One grant by id."""
    found = _records(conn, [ShareGrant.id == share_id])
    if not found:
        raise UnknownShare(f"no share has id {share_id}")
    return found[0]


def create_share(
    conn: Connection,
    principal: Principal,
    regional_pk: int,
    *,
    study_uids: list[str],
    scope: str,
    recipient: str,
    days: int,
    with_code: bool,
) -> NewShare:
    """Create the grant (consent already checked by the caller); return it with its secrets."""
    if principal.user_pk is None:
        raise InvalidShare("only a signed-in user can share (the grant names its sender)")
    token = secrets.token_urlsafe(32)
    code = f"{secrets.randbelow(10**8):08d}" if with_code else ""
    at = now()
    share_id = conn.execute(
        insert(ShareGrant)
        .values(
            token_sha256=digest(token),
            created_by_user_pk=principal.user_pk,
            recipient=recipient,
            regional_pk=regional_pk,
            study_uids=json.dumps(sorted(study_uids)),
            scope=scope,
            purpose=SHARE_PURPOSE,
            one_time_code_sha256=digest(code) if code else "",
            expires_at=at + timedelta(days=days),
            created_at=at,
        )
        .returning(ShareGrant.id)
    ).scalar_one()
    return NewShare(get_share(conn, int(share_id)), token, code)


def shares_for(conn: Connection, principal: Principal, received: bool = False) -> list[ShareRecord]:
    """The shares a caller may list: a patient's own, a sender's, or all for a regional
    admin; with ``received``, those addressed to the caller (RPPS or e-mail)."""
    if received:
        names = [n for n in (principal.rpps, principal.email.lower()) if n]
        return _records(conn, [ShareGrant.recipient.in_(names)]) if names else []
    if principal.has(Role.PATIENT):
        if principal.regional_patient_pk is None:
            return []
        return _records(conn, [ShareGrant.regional_pk == principal.regional_patient_pk])
    if principal.has(Role.REGIONAL_ADMIN) or principal.kind is Kind.SYSTEM:
        return _records(conn, [])
    if principal.user_pk is None:
        return []
    return _records(conn, [ShareGrant.created_by_user_pk == principal.user_pk])


def may_revoke(principal: Principal, share: ShareRecord, sender_pk: int, enforced: bool) -> bool:
    """The sender, the patient and regional admins may revoke a share."""
    return (
        not enforced
        or principal.has(Role.REGIONAL_ADMIN)
        or (principal.user_pk is not None and principal.user_pk == sender_pk)
        or (principal.has(Role.PATIENT) and principal.regional_patient_pk == share.regional_pk)
    )


def sender_of(conn: Connection, share_id: int) -> int:
    """The user primary key of a grant's sender."""
    pk = conn.execute(
        select(ShareGrant.created_by_user_pk).where(ShareGrant.id == share_id)
    ).scalar_one_or_none()
    if pk is None:
        raise UnknownShare(f"no share has id {share_id}")
    return int(pk)


def revoke_share(conn: Connection, principal: Principal, share_id: int) -> ShareRecord:
    """Revoke a grant (idempotent: the first revocation time is kept) and audit it."""
    share = get_share(conn, share_id)
    if share.revoked_at is None:
        at = now()
        conn.execute(update(ShareGrant).where(ShareGrant.id == share_id).values(revoked_at=at))
        record(
            conn,
            AuditEntry(
                actor_kind=str(principal.kind),
                actor_id=principal.audit_id,
                action="share-revoke",
                outcome="ok",
                purpose="sharing",
                rule="revoked",
                regional_pk=share.regional_pk,
                detail={"share_id": share_id},
            ),
            at=at,
        )
        share = get_share(conn, share_id)
    return share


# -- opening a link ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenedGrant:
    """A grant found from its link token, and why it can or cannot be used."""

    id: int
    regional_pk: int
    study_uids: tuple[str, ...]
    scope: str
    code_sha256: str
    expires_at: datetime
    state: str


def grant_of_token(conn: Connection, token: str) -> OpenedGrant | None:
    """The grant whose token this is (any state), or None."""
    row = conn.execute(
        select(*ShareGrant.__table__.c).where(ShareGrant.token_sha256 == digest(token))
    ).first()
    if row is None:
        return None
    return OpenedGrant(
        row.id,
        row.regional_pk,
        tuple(json.loads(row.study_uids)),
        row.scope,
        row.one_time_code_sha256,
        row.expires_at,
        _state(conn, row, now()),
    )


USED = "used:"
"""Prefix of the stored code hash once the code has opened a session (no migration:
the hash column keeps both facts)."""


def code_used(grant: OpenedGrant) -> bool:
    """True when the grant's one-time code has already opened a session."""
    return grant.code_sha256.startswith(USED)


def consume_code(conn: Connection, grant_pk: int) -> None:
    """Mark the one-time code used: the link cannot open another session."""
    conn.execute(
        update(ShareGrant)
        .where(ShareGrant.id == grant_pk, ~ShareGrant.one_time_code_sha256.startswith(USED))
        # keeps within the column's 64 characters; a used code never matches again
        .values(one_time_code_sha256=USED + func.substr(ShareGrant.one_time_code_sha256, 1, 59))
    )


def code_matches(grant: OpenedGrant, code: str) -> bool:
    """True when the grant needs no code or ``code`` is its code (constant time)."""
    if not grant.code_sha256:
        return True
    return hmac.compare_digest(digest(code.strip()), grant.code_sha256)


def code_locked(conn: Connection, grant_pk: int) -> bool:
    """Too many wrong codes for this grant in the last :data:`CODE_WINDOW`."""
    failures = conn.execute(
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.actor_id == principal_of_grant(grant_pk).audit_id,
            AuditEvent.rule == "share-code",
            AuditEvent.at > now() - CODE_WINDOW,
        )
    ).scalar_one()
    return int(failures) >= CODE_ATTEMPTS


def shared_study_uids(conn: Connection, grant: OpenedGrant) -> list[str]:
    """The Study Instance UIDs the grant shows (every study of the patient for scope
    ``patient``), in the index."""
    stmt = (
        select(Study.study_instance_uid)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(Patient.regional_patient_pk == grant.regional_pk)
        .order_by(Study.study_date, Study.id)
    )
    if grant.scope != "patient":
        stmt = stmt.where(Study.study_instance_uid.in_(grant.study_uids))
    return [str(uid) for uid in conn.execute(stmt).scalars()]


def principal_of_grant(grant_pk: int) -> Principal:
    """The principal of a share-link bearer (audited as ``share:{grant id}``)."""
    return Principal(Kind.SHARE, f"share-{grant_pk}", share_grant_pk=grant_pk)


def share_session_principal(session: Session, grant_pk: int) -> Principal | None:
    """The principal of a share-link session (the hook of
    :class:`pacs_hub.trust.requests.Authenticator`): any grant that exists, revoked or
    not, so that the policy answers 403 (rule ``share-scope``) once it is no longer
    usable, rather than the session failing as unauthenticated."""
    found = session.scalar(select(ShareGrant.id).where(ShareGrant.id == grant_pk))
    return None if found is None else principal_of_grant(int(found))
