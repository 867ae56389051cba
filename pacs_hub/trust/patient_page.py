"""The patient's page (``/patient``): consents, shares and every access, in plain words.

A patient signed in through the embedded issuer (role ``patient``, linked to one
regional patient) sees, in French or English:

* their consents in force, with the exact text for each purpose; they grant, refuse
  or withdraw (method ``patient-link``, the SHA-256 of the text shown recorded as
  proof; CSP L1110-4 IV, décret 2016-1349);
* the shares of their images, which they may revoke;
* every access to their images from the audit trail: who, when, which study, why
  (the policy rule in words), break-glass accesses flagged (CSP R6113-9-2).

Reading the page is itself audited (``audit-read``, DICOM "Audit Log Used", PS3.15
A.5.3.2). Forms are plain POSTs checked to come from the hub's own origin.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import Connection, select

from pacs_hub.storage.models import Study
from pacs_hub.trust import consent, shares
from pacs_hub.trust.audit import AuditEntry, record
from pacs_hub.trust.consent_api import Caller, Hub
from pacs_hub.trust.models import AuditEvent, User
from pacs_hub.trust.pages import esc, language, page, same_origin
from pacs_hub.trust.patient_words import ACTIONS, RULES, WORDS, Words
from pacs_hub.trust.principal import Kind, Principal, Role
from pacs_hub.trust.shares_api import ShareId

router = APIRouter()
ACCESS_ACTIONS = ("view", "retrieve", "query", "export", "share", "delete")
GENERAL_PURPOSES = ("regional-sharing", "national-record", "research")
MAX_ACCESSES = 500


@dataclass(frozen=True, slots=True)
class Access:
    """Audit entries of one caller on one study for one reason on one day, grouped."""

    day: str
    first: datetime
    last: datetime
    actor_id: str
    action: str
    study_uid: str
    rule: str
    outcome: str
    break_glass: bool
    reason: str
    count: int


def _patient(principal: Principal) -> int | None:
    if principal.has(Role.PATIENT) and principal.regional_patient_pk is not None:
        return principal.regional_patient_pk
    return None


def group_accesses(rows: Iterable[Any]) -> list[Access]:
    """Fold the trail's entries (newest first) into one line per day, caller, study,
    action and rule: a viewer's hundred frame requests read as one access."""
    groups: dict[tuple[str, ...], Access] = {}
    for row in rows:
        flagged = bool(json.loads(row.detail or "{}").get("break_glass"))
        day = row.at.date().isoformat()
        key = (day, row.actor_id, row.action, row.study_uid, row.rule, row.outcome)
        seen = groups.get(key)
        if seen is None:
            groups[key] = Access(
                day, row.at, row.at, row.actor_id, row.action, row.study_uid, row.rule,
                row.outcome, flagged, row.reason, 1,
            )  # fmt: skip
        else:
            groups[key] = Access(
                day, row.at, seen.last, seen.actor_id, seen.action, seen.study_uid, seen.rule,
                seen.outcome, seen.break_glass or flagged, seen.reason or row.reason,
                seen.count + 1,
            )  # fmt: skip
    return list(groups.values())


def _accesses(conn: Connection, regional_pk: int) -> list[Access]:
    rows = conn.execute(
        select(AuditEvent)
        .where(AuditEvent.regional_pk == regional_pk, AuditEvent.action.in_(ACCESS_ACTIONS))
        .order_by(AuditEvent.id.desc())
        .limit(MAX_ACCESSES * 20)
    )
    return group_accesses(rows)[:MAX_ACCESSES]


def _who(conn: Connection, words: Words, actor_id: str, own: int) -> str:
    kind, _, name = actor_id.partition(":")
    if kind == Kind.USER:
        user = conn.execute(
            select(User.display_name, User.roles, User.regional_patient_pk).where(
                User.username == name
            )
        ).first()
        if user is None:
            return esc(name)
        if user[2] == own:
            return esc(words["you"])
        roles = ", ".join(words["roles"].get(r, r) for r in str(user[1]).split(",") if r)
        return f"{esc(user[0] or name)} <small>({esc(roles)})</small>"
    if kind == Kind.SHARE:
        grant = name.removeprefix("share-")
        return esc(words["share_bearer"].format(id=grant))
    if kind == Kind.NODE:
        return esc(words["node"].format(ae=name))
    if kind == Kind.SYSTEM:
        return esc(words["system"])
    return esc(actor_id)


def _study(conn: Connection, words: Words, uid: str) -> str:
    if not uid:
        return esc(words["all_studies"])
    row = conn.execute(
        select(Study.study_date, Study.study_description, Study.modalities_in_study).where(
            Study.study_instance_uid == uid
        )
    ).first()
    if row is None:
        return f"<small>{esc(uid)}</small>"
    date = f"{row[0][6:8]}/{row[0][4:6]}/{row[0][:4]}" if len(row[0]) == 8 else ""
    label = " ".join(p for p in (date, row[2].replace("\\", "/"), row[1]) if p)
    return f"{esc(label)}<br><small>{esc(uid)}</small>"


def _access_table(conn: Connection, words: Words, lang: str, own: int) -> str:
    accesses = _accesses(conn, own)
    if not accesses:
        return f"<p>{esc(words['no_access'])}</p>"
    lines = []
    for a in accesses:
        why = esc(RULES[lang].get(a.rule, a.rule))
        if a.break_glass:
            why = f'<span class="flag">{esc(words["break_glass"])}</span> — {esc(a.reason)}'
        what = esc(ACTIONS[lang].get(a.action, a.action))
        if a.outcome == "deny":
            what = f'<span class="flag">{esc(words["refused"])}</span> {what}'
        times = a.last.strftime("%H:%M") + (
            f"-{a.first.strftime('%H:%M')} ({a.count} x)" if a.count > 1 else ""
        )
        lines.append(
            f"<tr><td>{esc(a.day)} {esc(times)} UTC</td><td>{_who(conn, words, a.actor_id, own)}"
            f"</td><td>{what}</td><td>{_study(conn, words, a.study_uid)}</td><td>{why}</td></tr>"
        )
    head = "".join(f"<th>{esc(h)}</th>" for h in words["access_head"])
    return f'<table id="accesses"><tr>{head}</tr>{"".join(lines)}</table>'


def _consent_form(text: consent.ConsentText, words: Words, lang: str, status: str) -> str:
    buttons = "".join(
        f'<button name="status" value="{s}">{esc(words["buttons"][s])}</button> '
        for s in ("granted", "refused", "withdrawn")
        if s != status and not (s == "withdrawn" and status != "granted")
    )
    return (
        f"<blockquote>{esc(text.text)}</blockquote>"
        f'<form method="post" action="/patient/consents?lang={lang}">'
        f'<input type="hidden" name="purpose" value="{esc(text.purpose)}">'
        f'<input type="hidden" name="doctor_ref" value="{esc(text.doctor_ref)}">'
        f'<input type="hidden" name="text_sha256" value="{text.sha256}">{buttons}</form>'
    )


def _consents(conn: Connection, words: Words, lang: str, own: int) -> str:
    in_force = {(c.purpose, c.doctor_ref): c for c in consent.consents_in_force(conn, own)}
    parts = []
    keys = [(p, "") for p in GENERAL_PURPOSES]
    keys += sorted(k for k in in_force if k[0] == "named-doctor")
    for purpose, doctor in keys:
        current = in_force.get((purpose, doctor))
        status = current.status if current else "none"
        state = words["status"][status]
        if current is not None:
            how = words["method"][current.method]
            state += f" — {current.at:%d/%m/%Y %H:%M} UTC, {how}"
        title = words["purposes"][purpose]
        if purpose == "named-doctor":
            title += f" : {doctor or words['link_doctor']}"
        text = consent.consent_text(purpose, lang, doctor)
        parts.append(
            f'<section class="consent" data-purpose="{esc(purpose)}" data-doctor="{esc(doctor)}">'
            f"<h3>{esc(title)}</h3><p><b>{esc(state)}</b></p>"
            f"{_consent_form(text, words, lang, status)}</section>"
        )
    return "".join(parts)


def _shares(conn: Connection, words: Words, lang: str, principal: Principal) -> str:
    found = shares.shares_for(conn, principal)
    if not found:
        return f"<p>{esc(words['no_share'])}</p>"
    lines = []
    for s in found:
        to = s.recipient or words["link"]
        what = words["all_studies"] if s.scope == "patient" else f"{len(s.study_uids)}"
        revoke = ""
        if s.state == "active":
            revoke = (
                f'<form class="inline" method="post" action="/patient/shares/{s.id}/revoke'
                f'?lang={lang}"><button>{esc(words["revoke"])}</button></form>'
            )
        lines.append(
            f'<tr data-share="{s.id}"><td>{esc(to)}</td><td>{esc(s.created_by)}</td>'
            f"<td>{esc(what)}</td><td>{s.expires_at:%d/%m/%Y}</td>"
            f"<td>{esc(words['share_state'].get(s.state, s.state))} {revoke}</td></tr>"
        )
    head = "".join(f"<th>{esc(h)}</th>" for h in words["share_head"])
    return f'<table id="shares"><tr>{head}</tr>{"".join(lines)}</table>'


@router.get("/patient", include_in_schema=False)
def patient_page(request: Request, hub: Hub, principal: Caller) -> Response:
    """The signed-in patient's consents, shares and accesses."""
    lang = language(request)
    words = WORDS[lang]
    if principal.kind is Kind.ANONYMOUS:
        return RedirectResponse(f"/auth/login?next=/patient%3Flang%3D{lang}", status_code=303)
    own = _patient(principal)
    if own is None:
        return page(words["title"], f"<p>{esc(words['not_patient'])}</p>", lang, 403)
    with hub.database.session() as session:
        conn = session.connection()
        body = (
            f"<p>{esc(words['intro'])}</p><p><a href='/auth/logout'>{esc(words['logout'])}</a>"
            f" · <a href='/patient?lang={'en' if lang == 'fr' else 'fr'}'>{words['other']}</a>"
            f"</p><h2>{esc(words['consents'])}</h2>{_consents(conn, words, lang, own)}"
            f"<h2>{esc(words['shares'])}</h2>{_shares(conn, words, lang, principal)}"
            f"<h2>{esc(words['accesses'])}</h2>{_access_table(conn, words, lang, own)}"
        )
        record(
            conn,
            AuditEntry(
                actor_kind=str(principal.kind),
                actor_id=principal.audit_id,
                action="audit-read",
                outcome="allow",
                rule="own-record",
                regional_pk=own,
                detail={"page": "patient"},
            ),
        )
    return page(words["title"], body, lang)


@router.post("/patient/consents", include_in_schema=False)
def patient_consent(
    request: Request,
    hub: Hub,
    principal: Caller,
    purpose: Annotated[str, Form(max_length=32)],
    status: Annotated[str, Form(max_length=16)],
    text_sha256: Annotated[str, Form(max_length=64)],
    doctor_ref: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    """The patient grants, refuses or withdraws a consent from their page."""
    lang = language(request)
    own = _patient(principal)
    if own is None or not same_origin(request):
        return page(WORDS[lang]["title"], esc(WORDS[lang]["not_patient"]), lang, 403)
    with hub.database.session() as session:
        consent.record_consent(
            session.connection(),
            principal,
            own,
            purpose=purpose,
            status=status,
            method="patient-link",
            text_sha256=text_sha256,
            doctor_ref=doctor_ref,
        )
    return RedirectResponse(f"/patient?lang={lang}", status_code=303)


@router.post("/patient/shares/{share_id}/revoke", include_in_schema=False)
def patient_revoke(share_id: ShareId, request: Request, hub: Hub, principal: Caller) -> Response:
    """The patient revokes a share of their images."""
    lang = language(request)
    own = _patient(principal)
    if own is None or not same_origin(request):
        return page(WORDS[lang]["title"], esc(WORDS[lang]["not_patient"]), lang, 403)
    with hub.database.session() as session:
        conn = session.connection()
        if shares.get_share(conn, share_id).regional_pk != own:
            raise shares.UnknownShare(f"no share has id {share_id}")
        shares.revoke_share(conn, principal, share_id)
    return RedirectResponse(f"/patient?lang={lang}", status_code=303)
