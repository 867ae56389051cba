"""Share API (``/api/shares``) and the share links (``/share/{token}``).

* ``POST /api/shares`` ``{studies | patient, scope, recipient, days, one_time_code,
  consent_text_sha256}`` — a radiologist or referring doctor who may view the
  studies (policy ``view``, not through a share) shares them; the patient's
  ``named-doctor`` consent for the recipient must be granted, or is recorded now
  (``in-person``) when ``consent_text_sha256`` proves which text the patient was
  shown. Answers the link ``/share/{token}`` and the one-time code, once.
* ``GET /api/shares`` — the caller's shares (``?received=true``: those addressed to
  the caller); a patient gets the shares of their images.
* ``GET /api/shares/{id}``, ``DELETE /api/shares/{id}`` (or ``POST .../revoke``) —
  read or revoke (the sender, the patient, a regional admin).
* ``GET /share/{token}`` — checks the grant, asks for the one-time code when there
  is one (``POST /share/{token}``), sets the share-session cookie and redirects to
  the viewer with the shared studies only; 403 once revoked, expired or when the
  consent was withdrawn.

Every share, revocation and link opening is audited in its transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection

from pacs_hub.trust import consent, shares
from pacs_hub.trust.audit import decision_entry, record
from pacs_hub.trust.auth_api import share_session_token
from pacs_hub.trust.consent_api import Caller, Hub, consent_method, deny, require_caller
from pacs_hub.trust.pages import esc, language, page
from pacs_hub.trust.policy import Decision, Policy, latest_consent
from pacs_hub.trust.principal import Action, Principal, Purpose, Role
from pacs_hub.trust.requests import authenticator, set_session_cookie

router = APIRouter()
link_router = APIRouter()
SHARERS = (Role.RADIOLOGIST, Role.REFERRING_DOCTOR, Role.REGIONAL_ADMIN)
ShareId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Id of the share")]
SESSION_SECONDS = 8 * 3600
"""Longest share-link session; the grant's own expiry ends it sooner."""


class ShareIn(BaseModel):
    """A share to create."""

    model_config = ConfigDict(extra="forbid")

    studies: list[str] = Field(default_factory=list, max_length=200, description="Study UIDs")
    patient: str = Field(default="", max_length=64, description="Regional id (scope patient)")
    scope: Literal["study", "patient"] = "study"
    recipient: str = Field(
        default="", max_length=128, description="RPPS-like id or e-mail; '' = plain link"
    )
    days: int = Field(default=7, ge=1, description="Life of the link (at most share_max_days)")
    one_time_code: bool = Field(default=False, description="Also require a code to open it")
    consent_text_sha256: str = Field(
        default="",
        pattern="^([0-9a-fA-F]{64})?$",
        description="The patient agreed in person to this text (GET /api/consents/text)",
    )


class ShareOut(BaseModel):
    """A share grant (never its token)."""

    id: int
    patient: str
    studies: list[str]
    scope: str
    recipient: str
    sent_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    one_time_code_required: bool
    state: str


class NewShareOut(BaseModel):
    """A created share, with the link and the code: shown once, never stored in clear."""

    share: ShareOut
    link: str
    url: str
    one_time_code: str


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def share_out(conn: Connection, share: shares.ShareRecord) -> ShareOut:
    """The API form of a share."""
    return ShareOut(
        id=share.id,
        patient=consent.regional_id_of(conn, share.regional_pk),
        studies=list(share.study_uids),
        scope=share.scope,
        recipient=share.recipient,
        sent_by=share.created_by,
        created_at=share.created_at.replace(tzinfo=UTC),
        expires_at=share.expires_at.replace(tzinfo=UTC),
        revoked_at=_utc(share.revoked_at),
        one_time_code_required=share.has_code,
        state=share.state,
    )


def _patient_of(conn: Connection, policy: Policy, uids: list[str], patient: str) -> int | Decision:
    """The one regional patient of the studies (and of ``patient``), or a not-found refusal."""
    patients: set[int | None] = set()
    for uid in uids:
        facts = policy.study_facts(conn, uid)
        if facts is None:
            return Decision(False, "not-found", study_uid=uid)
        patients.add(facts.regional_pk)
    if patient:
        patients.add(consent.regional_pk_of(conn, patient))
    if not patients:
        raise shares.InvalidShare("name the studies to share, or a patient with scope 'patient'")
    if None in patients:
        raise shares.InvalidShare("a study to share is not linked to a regional patient yet")
    if len(patients) != 1:
        raise shares.InvalidShare("a share covers the studies of one regional patient only")
    found = patients.pop()
    assert found is not None
    return found


def _may_share(
    conn: Connection, policy: Policy, principal: Principal, body: ShareIn
) -> tuple[int | None, list[Decision], Decision | None]:
    """The patient and the view decisions that allow the share, or the refusal."""
    if policy.enforced and not principal.has(*SHARERS):
        return None, [], Decision(False, "share-no-role")
    uids = list(dict.fromkeys(body.studies))
    regional_pk = _patient_of(conn, policy, uids, body.patient)
    if isinstance(regional_pk, Decision):
        return None, [], regional_pk
    decisions = [
        policy.decide(conn, principal, Action.VIEW, Purpose.CARE, study_uid=uid) for uid in uids
    ]
    if body.scope == "patient":  # every study of the patient, present and future
        decisions.append(
            policy.decide(conn, principal, Action.VIEW, Purpose.CARE, regional_pk=regional_pk)
        )
    for decision in decisions:
        if not decision.allowed or decision.rule == "share":
            rule = "share-reshare" if decision.rule == "share" else decision.rule
            return regional_pk, [], Decision(False, rule, False, regional_pk, decision.study_uid)
    return regional_pk, decisions, None


def _ensure_consent(
    conn: Connection,
    policy: Policy,
    principal: Principal,
    regional_pk: int,
    body: ShareIn,
    recipient: str,
) -> Decision | None:
    """None when the patient's consent for this recipient is (now) granted; else a refusal."""
    if latest_consent(conn, regional_pk, shares.SHARE_PURPOSE, recipient) == "granted":
        return None
    if not body.consent_text_sha256:
        raise consent.ConsentRequired(
            "the patient has not consented to sharing with this recipient: record it"
            " (POST /api/consents), or send consent_text_sha256 if they agreed in person"
        )
    method, decision = consent_method(conn, policy, principal, regional_pk)
    if not decision.allowed or method != "in-person":
        return Decision(False, "consent-not-recordable", regional_pk=regional_pk)
    consent.record_consent(
        conn,
        principal,
        regional_pk,
        purpose=shares.SHARE_PURPOSE,
        status="granted",
        method="in-person",
        text_sha256=body.consent_text_sha256,
        doctor_ref=recipient,
        context="share",
    )
    return None


@router.post("/shares", status_code=201, response_model=NewShareOut)
def post_share(body: ShareIn, request: Request, hub: Hub, principal: Caller) -> NewShareOut:
    """Share studies with a named doctor or by link."""
    policy = Policy(hub.settings)
    require_caller(policy, principal)
    if body.days > hub.settings.share_max_days:
        raise shares.InvalidShare(
            f"days {body.days} exceeds share_max_days {hub.settings.share_max_days}"
        )
    recipient = shares.normalise_recipient(body.recipient)
    with hub.database.session() as session:
        conn = session.connection()
        regional_pk, decisions, refusal = _may_share(conn, policy, principal, body)
        if refusal is None and regional_pk is not None:
            refusal = _ensure_consent(conn, policy, principal, regional_pk, body, recipient)
        if refusal is None and regional_pk is not None:
            uids = [] if body.scope == "patient" else list(dict.fromkeys(body.studies))
            new = shares.create_share(
                conn,
                principal,
                regional_pk,
                study_uids=uids,
                scope=body.scope,
                recipient=recipient,
                days=body.days,
                with_code=body.one_time_code,
            )
            detail = {"share_id": new.share.id, "recipient": recipient, "scope": body.scope}
            for decision in decisions:
                record(
                    conn,
                    decision_entry(
                        principal, Action.SHARE, Purpose.SHARING, decision, detail=detail
                    ),
                )
            link = f"{shares.SHARE_PATH}{new.token}"
            return NewShareOut(
                share=share_out(conn, new.share),
                link=link,
                url=str(request.base_url).rstrip("/") + link,
                one_time_code=new.code,
            )
    assert refusal is not None
    deny(hub.database, principal, Action.SHARE, refusal)


@router.get("/shares", response_model=list[ShareOut])
def list_shares(
    hub: Hub, principal: Caller, received: Annotated[bool, Query()] = False
) -> list[ShareOut]:
    """The caller's shares (sent, or received with ``received=true``); a patient's own."""
    require_caller(Policy(hub.settings), principal)
    with hub.database.reader() as session:
        conn = session.connection()
        return [share_out(conn, s) for s in shares.shares_for(conn, principal, received)]


def _visible(
    conn: Connection, policy: Policy, principal: Principal, share_id: int
) -> shares.ShareRecord:
    share = shares.get_share(conn, share_id)
    sender = shares.sender_of(conn, share_id)
    names = {principal.rpps, principal.email.lower()} - {""}
    if shares.may_revoke(principal, share, sender, policy.enforced) or share.recipient in names:
        return share
    raise shares.UnknownShare(f"no share has id {share_id}")


@router.get("/shares/{share_id}", response_model=ShareOut)
def get_share(share_id: ShareId, hub: Hub, principal: Caller) -> ShareOut:
    """One share, for its sender, its recipient, the patient or a regional admin."""
    policy = Policy(hub.settings)
    require_caller(policy, principal)
    with hub.database.reader() as session:
        conn = session.connection()
        return share_out(conn, _visible(conn, policy, principal, share_id))


@router.delete("/shares/{share_id}", response_model=ShareOut)
@router.post("/shares/{share_id}/revoke", response_model=ShareOut)
def revoke_share(share_id: ShareId, hub: Hub, principal: Caller) -> ShareOut:
    """Revoke a share at once (the sender, the patient or a regional admin)."""
    policy = Policy(hub.settings)
    require_caller(policy, principal)
    with hub.database.session() as session:
        conn = session.connection()
        share = _visible(conn, policy, principal, share_id)
        if shares.may_revoke(principal, share, shares.sender_of(conn, share_id), policy.enforced):
            return share_out(conn, shares.revoke_share(conn, principal, share_id))
        refusal = Decision(False, "share-not-sender", regional_pk=share.regional_pk)
    deny(hub.database, principal, Action.SHARE, refusal)


# -- the link ---------------------------------------------------------------------------

TEXT = {
    "fr": {
        "title": "Partage d'images médicales",
        "gone": "Ce lien de partage n'est plus valable (retiré, expiré, ou le patient a retiré "
        "son consentement). Demandez un nouveau lien à la personne qui vous l'a envoyé.",
        "code": "Saisissez le code à usage unique qui vous a été communiqué séparément.",
        "wrong": "Code incorrect.",
        "locked": "Trop d'essais : réessayez dans 15 minutes.",
        "used": "Ce code a déjà servi : demandez un nouveau partage à son auteur.",
        "open": "Ouvrir",
    },
    "en": {
        "title": "Shared medical images",
        "gone": "This share link is no longer valid (revoked, expired, or the patient withdrew "
        "their consent). Ask the person who sent it for a new link.",
        "code": "Enter the one-time code you were given separately.",
        "wrong": "Wrong code.",
        "locked": "Too many attempts: try again in 15 minutes.",
        "used": "This code was already used: ask the sender for a new share.",
        "open": "Open",
    },
}


def _code_form(token: str, lang: str, message: str = "", status: int = 200) -> Response:
    words = TEXT[lang]
    error = f'<p class="flag">{esc(message)}</p>' if message else ""
    body = (
        f"{error}<p>{esc(words['code'])}</p>"
        f'<form method="post" action="{shares.SHARE_PATH}{esc(token)}?lang={lang}">'
        '<input name="code" inputmode="numeric" autocomplete="one-time-code" required autofocus> '
        f'<button type="submit">{esc(words["open"])}</button></form>'
    )
    return page(words["title"], body, lang, status)


def _audit_open(
    conn: Connection, policy: Policy, grant: shares.OpenedGrant, uids: list[str]
) -> None:
    principal = shares.principal_of_grant(grant.id)
    detail = {"share_link": "opened"}
    decisions = [
        policy.decide(conn, principal, Action.VIEW, Purpose.SHARING, study_uid=uid) for uid in uids
    ]
    if not uids:  # a patient-wide share of a patient with no study left
        decisions.append(
            policy.decide(
                conn, principal, Action.VIEW, Purpose.SHARING, regional_pk=grant.regional_pk
            )
        )
    for decision in decisions:
        entry = decision_entry(principal, Action.VIEW, Purpose.SHARING, decision, detail=detail)
        record(conn, entry)


def _refuse(conn: Connection, grant: shares.OpenedGrant | None, rule: str) -> None:
    if grant is not None:
        principal = shares.principal_of_grant(grant.id)
        refusal = Decision(False, rule, regional_pk=grant.regional_pk)
        record(conn, decision_entry(principal, Action.VIEW, Purpose.SHARING, refusal))


def _open(request: Request, hub: Hub, token: str, code: str | None) -> Response:
    lang = language(request)
    policy = Policy(hub.settings)
    with hub.database.session() as session:
        conn = session.connection()
        grant = shares.grant_of_token(conn, token)
        if grant is None or grant.state != "active":
            _refuse(conn, grant, f"share-{grant.state}" if grant else "share-unknown")
            return page(TEXT[lang]["title"], f"<p>{esc(TEXT[lang]['gone'])}</p>", lang, 403)
        if shares.code_used(grant):
            _refuse(conn, grant, "share-code-used")
            return _code_form(token, lang, TEXT[lang]["used"], 403)
        if grant.code_sha256 and code is None:
            return _code_form(token, lang)
        if shares.code_locked(conn, grant.id):
            return _code_form(token, lang, TEXT[lang]["locked"], 429)
        if code is not None and not shares.code_matches(grant, code):
            _refuse(conn, grant, "share-code")
            return _code_form(token, lang, TEXT[lang]["wrong"], 403)
        if grant.code_sha256:
            shares.consume_code(conn, grant.id)  # one-time: this session only
        uids = shares.shared_study_uids(conn, grant)
        _audit_open(conn, policy, grant, uids)
    target = "/viewer?StudyInstanceUIDs=" + quote(",".join(uids), safe=",")
    response = RedirectResponse(target, status_code=303)
    auth = authenticator(request)
    if auth is not None:
        left = int((grant.expires_at - shares.now()).total_seconds())
        lifetime = max(60, min(left, SESSION_SECONDS))
        token = share_session_token(auth, grant.id, lifetime)
        set_session_cookie(request, response, token, lifetime)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@link_router.get("/share/{token}", include_in_schema=False)
def open_link(token: str, request: Request, hub: Hub) -> Response:
    """Open a share link (asks for the one-time code when the grant has one)."""
    return _open(request, hub, token, None)


@link_router.post("/share/{token}", include_in_schema=False)
def open_link_with_code(
    token: str, request: Request, hub: Hub, code: Annotated[str, Form(max_length=32)]
) -> Response:
    """The one-time code form."""
    return _open(request, hub, token, code)
