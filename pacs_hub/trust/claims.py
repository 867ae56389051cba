"""From verified token claims to a :class:`Principal` (and the user row behind it).

- Embedded issuer: ``sub`` is a local username; the user must exist and be active;
  roles and establishments come from the index, so a change takes effect at once.
- External provider, ``PACS_HUB_OIDC_CLAIMS=standard``: the user row is keyed by
  ``external_subject = iss|sub``; ``roles`` (a list of role names) and
  ``establishments`` (codes) claims add to what an admin granted the row.
- ``prosanteconnect`` (france.md section 8): ``SubjectNameID`` is the IDNPS,
  ``'8' + RPPS``; ``SubjectRefPro.exercices[0].codeProfession`` 10 (or ``SubjectRole``
  ``10^1.2.250.1.213.1.1.5.5``) is a physician (role referring-doctor; an admin may
  grant radiologist); each activity's ``numeroFinessSite`` that is a registered
  establishment code makes the user its staff for this session.

A token carrying a ``share`` claim is a share-link session: see :func:`share_principal`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs_hub.storage.models import Establishment
from pacs_hub.trust.models import ShareGrant, User
from pacs_hub.trust.policy import NotAuthenticated
from pacs_hub.trust.principal import Kind, Principal, Role
from pacs_hub.trust.users import parse_roles, principal_for

PHYSICIAN = "10"
"""Profession code of a physician (médecin) in the RPPS nomenclature (TRE_G15)."""
PROFESSION_ROLES = {PHYSICIAN: Role.REFERRING_DOCTOR}
SHARE_CLAIM = "share"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def share_principal(session: Session, grant_pk: int) -> Principal | None:
    """HOOK for the sharing work: the principal of a share-link session, or None.

    ``grant_pk`` comes from the ``share`` claim of a session token the hub signed
    (see :func:`pacs_hub.trust.auth_api.share_session_token`). A revoked or expired
    grant gives None (the caller answers 401).
    """
    grant = session.get(ShareGrant, grant_pk)
    if grant is None or grant.revoked_at is not None or grant.expires_at <= _now():
        return None
    return Principal(Kind.SHARE, f"share-{grant.id}", share_grant_pk=grant.id)


SharePrincipal = Callable[[Session, int], Principal | None]


def _local(session: Session, claims: dict[str, Any], share: SharePrincipal) -> Principal:
    if SHARE_CLAIM in claims:
        found = share(session, int(claims[SHARE_CLAIM]))
        if found is None:
            raise NotAuthenticated("this share link has expired or was revoked")
        return found
    user = session.scalars(select(User).where(User.username == str(claims["sub"]))).one_or_none()
    if user is None or not user.active:
        raise NotAuthenticated(f"the account {claims['sub']!r} is disabled or no longer exists")
    return principal_for(session, user)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str | int)]
    return []


def _establishments_by_code(session: Session, codes: Iterable[str]) -> set[int]:
    wanted = {c.strip() for c in codes if c and c.strip()}
    if not wanted:
        return set()
    found = session.scalars(select(Establishment.id).where(Establishment.code.in_(wanted)))
    return set(found)


def _psc_facts(claims: dict[str, Any]) -> tuple[str, set[Role], list[str]]:
    """RPPS, roles and FINESS codes from Pro Santé Connect claims."""
    idnps = str(claims.get("SubjectNameID", ""))
    rpps = idnps[1:] if idnps.startswith("8") and len(idnps) > 1 else idnps
    ref = claims.get("SubjectRefPro") or {}
    exercices = ref.get("exercices") if isinstance(ref, dict) else None
    professions: set[str] = set()
    finess: list[str] = []
    for exercice in exercices if isinstance(exercices, list) else []:
        if not isinstance(exercice, dict):
            continue
        professions.add(str(exercice.get("codeProfession", "")))
        activities = exercice.get("activities")
        for activity in activities if isinstance(activities, list) else []:
            if isinstance(activity, dict) and activity.get("numeroFinessSite"):
                finess.append(str(activity["numeroFinessSite"]))
    for role in _strings(claims.get("SubjectRole")):
        professions.add(role.split("^", 1)[0])
    roles = {PROFESSION_ROLES[p] for p in professions if p in PROFESSION_ROLES}
    return rpps, roles, finess


def _external_username(subject: str) -> str:
    return "oidc-" + hashlib.sha256(subject.encode("utf-8")).hexdigest()[:20]


def _external(session: Session, claims: dict[str, Any], profile: str) -> Principal:
    subject = f"{claims['iss']}|{claims['sub']}"
    if profile == "prosanteconnect":
        rpps, roles, codes = _psc_facts(claims)
    else:
        rpps = str(claims.get("rpps", ""))
        roles = set(parse_roles(_strings(claims.get("roles"))))
        codes = _strings(claims.get("establishments"))
    user = session.scalars(select(User).where(User.external_subject == subject)).one_or_none()
    if user is None:
        user = User(
            username=_external_username(subject),
            external_subject=subject,
            created_at=_now(),
        )
        session.add(user)
    elif not user.active:
        raise NotAuthenticated("this account is disabled on the hub")
    names = (claims.get("given_name", ""), claims.get("family_name", ""))
    user.display_name = " ".join(str(n) for n in names if n)[:128] or user.display_name
    user.rpps = rpps[:32] or user.rpps
    user.email = str(claims.get("email", ""))[:128] or user.email
    session.flush()
    base = principal_for(session, user)
    return Principal(
        Kind.USER,
        base.subject,
        roles=base.roles | roles,
        establishments=base.establishments | _establishments_by_code(session, codes),
        user_pk=base.user_pk,
        rpps=base.rpps,
        email=base.email,
        regional_patient_pk=base.regional_patient_pk,
    )


def principal_from_claims(
    session: Session,
    claims: dict[str, Any],
    *,
    local: bool,
    profile: str,
    share: SharePrincipal = share_principal,
) -> Principal:
    """The principal of verified ``claims`` (external users are created or updated)."""
    if local:
        return _local(session, claims, share)
    return _external(session, claims, profile)
