"""Patient consent to sharing, recorded with proof (CSP L1110-4 III-IV, R1110-3;
décret 2016-1349: consent collected by any means, electronically included, and
withdrawable at any time).

A consent decision is one row per (regional patient, purpose, named doctor):
``granted``, ``refused`` or ``withdrawn``, recorded ``in-person`` by a professional
or through a ``patient-link`` by the patient, with who recorded it, when, and the
proof: the SHA-256 of the exact text shown (:data:`TEXTS`, versioned here, French
and English). Rows are only ever appended; the latest one is in force
(:func:`pacs_hub.trust.policy.latest_consent`), so a withdrawal stops every share
grant of that purpose at the next request. Each decision is written to the audit
trail in the same transaction.

Purposes (FR Core Consent ``provision.purpose`` in spirit): ``regional-sharing``
(any professional of the region outside the care team), ``named-doctor`` (one
doctor, by RPPS-like id or e-mail; an empty doctor is "the doctor to whom a share
link is handed"), ``national-record`` (publication to the DMP) and ``research``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, insert, select

from pacs_hub.errors import HubError
from pacs_hub.storage.models import RegionalPatient
from pacs_hub.trust.audit import AuditEntry, record
from pacs_hub.trust.models import Consent
from pacs_hub.trust.principal import Principal

PURPOSES = ("regional-sharing", "named-doctor", "national-record", "research")
STATUSES = ("granted", "refused", "withdrawn")
METHODS = ("in-person", "patient-link")
LANGUAGES = ("fr", "en")
LINK_DOCTOR = ""
"""doctor_ref of a named-doctor consent that covers share links (no named recipient)."""

TEXTS: dict[str, dict[int, dict[str, str]]] = {
    "regional-sharing": {
        1: {
            "fr": (
                "J'accepte que les professionnels de santé de la région qui me prennent en "
                "charge, y compris en dehors de l'équipe de soins de l'établissement où mes "
                "examens ont été faits, consultent mes images médicales et leurs comptes "
                "rendus. Je peux retirer mon accord à tout moment ; le retrait prend effet "
                "immédiatement."
            ),
            "en": (
                "I agree that the health professionals of the region who take care of me, "
                "including outside the care team of the establishment where my examinations "
                "were done, may view my medical images and their reports. I may withdraw my "
                "agreement at any time; withdrawal takes effect immediately."
            ),
        }
    },
    "named-doctor": {
        1: {
            "fr": (
                "J'accepte que mes images médicales soient partagées avec le médecin "
                "suivant : {doctor}. Il pourra les consulter jusqu'à la date d'expiration du "
                "partage. Je peux retirer mon accord à tout moment ; le retrait prend effet "
                "immédiatement."
            ),
            "en": (
                "I agree that my medical images be shared with the following doctor: "
                "{doctor}. They may view them until the share expires. I may withdraw my "
                "agreement at any time; withdrawal takes effect immediately."
            ),
        }
    },
    "national-record": {
        1: {
            "fr": (
                "J'accepte que mes examens d'imagerie soient publiés dans mon Dossier "
                "Médical Partagé (Mon espace santé). Je peux retirer mon accord à tout "
                "moment."
            ),
            "en": (
                "I agree that my imaging examinations be published to my national shared "
                "medical record (Mon espace santé). I may withdraw my agreement at any time."
            ),
        }
    },
    "research": {
        1: {
            "fr": (
                "J'accepte que mes images médicales, rendues anonymes, soient utilisées pour "
                "la recherche médicale. Je peux retirer mon accord à tout moment ; les "
                "utilisations futures cesseront."
            ),
            "en": (
                "I agree that my medical images, made anonymous, be used for medical "
                "research. I may withdraw my agreement at any time; future uses will stop."
            ),
        }
    },
}
LINK_DOCTOR_NAME = {
    "fr": "le médecin à qui le lien de partage est remis",
    "en": "the doctor to whom the share link is handed",
}


class InvalidConsent(HubError):
    """A purpose, status, language or proof the consent register does not accept."""

    http_status = 422
    title = "Invalid consent"


class ConsentRequired(HubError):
    """Sharing needs the patient's consent, which is not granted (CSP L1110-4 III)."""

    http_status = 409
    title = "Consent required"


class UnknownPatient(HubError):
    """No regional patient has this regional id."""

    http_status = 404
    title = "Unknown patient"


@dataclass(frozen=True, slots=True)
class ConsentText:
    """The exact text to show for one purpose, and the hash that proves it was shown."""

    purpose: str
    doctor_ref: str
    version: int
    lang: str
    text: str

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the UTF-8 text: the proof recorded with the decision."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One recorded consent decision."""

    id: int
    regional_pk: int
    purpose: str
    doctor_ref: str
    status: str
    method: str
    recorded_by: str
    proof_sha256: str
    at: datetime


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidConsent(f"{what} {value!r} is not one of {', '.join(allowed)}")
    return value


def consent_text(
    purpose: str, lang: str = "fr", doctor_ref: str = "", version: int | None = None
) -> ConsentText:
    """The text to show the patient (the current version unless ``version`` is given)."""
    versions = TEXTS.get(_check(purpose, PURPOSES, "purpose"), {})
    _check(lang, LANGUAGES, "language")
    chosen = max(versions) if version is None else version
    if chosen not in versions:
        raise InvalidConsent(f"consent text version {chosen} of {purpose!r} does not exist")
    if purpose != "named-doctor" and doctor_ref:
        raise InvalidConsent(f"a doctor is named only for named-doctor consent, not {purpose!r}")
    doctor = doctor_ref or LINK_DOCTOR_NAME[lang]
    text = versions[chosen][lang].replace("{doctor}", doctor)
    return ConsentText(purpose, doctor_ref, chosen, lang, text)


def shown_text(purpose: str, doctor_ref: str, proof_sha256: str) -> ConsentText:
    """The known text (any version, any language) whose hash is ``proof_sha256``."""
    for version in TEXTS.get(_check(purpose, PURPOSES, "purpose"), {}):
        for lang in LANGUAGES:
            text = consent_text(purpose, lang, doctor_ref, version)
            if text.sha256 == proof_sha256.lower():
                return text
    raise InvalidConsent(
        f"text_sha256 {proof_sha256[:16]}... is not the hash of a consent text of {purpose!r}"
        " for this doctor: show the text from GET /api/consents/text and send its sha256"
    )


def regional_pk_of(conn: Connection, regional_id: str) -> int:
    """The primary key of the active regional patient ``regional_id``."""
    pk = conn.execute(
        select(RegionalPatient.id).where(
            RegionalPatient.regional_id == regional_id, RegionalPatient.active.is_(True)
        )
    ).scalar_one_or_none()
    if pk is None:
        raise UnknownPatient(f"no active regional patient has regional id {regional_id!r}")
    return int(pk)


def regional_id_of(conn: Connection, regional_pk: int) -> str:
    """The public regional id of a regional patient."""
    return str(
        conn.execute(
            select(RegionalPatient.regional_id).where(RegionalPatient.id == regional_pk)
        ).scalar_one()
    )


def record_consent(
    conn: Connection,
    principal: Principal,
    regional_pk: int,
    *,
    purpose: str,
    status: str,
    method: str,
    text_sha256: str,
    doctor_ref: str = "",
    context: str = "consent",
) -> ConsentRecord:
    """Append a consent decision and its audit entry in the caller's transaction.

    The caller has already decided that ``principal`` may record it (see
    :mod:`pacs_hub.trust.consent_api`); ``text_sha256`` must be the hash of a known
    consent text for this purpose and doctor.
    """
    _check(status, STATUSES, "status")
    _check(method, METHODS, "method")
    doctor_ref = doctor_ref.strip()
    shown = shown_text(purpose, doctor_ref, text_sha256)
    at = datetime.now(UTC).replace(tzinfo=None)
    values: dict[str, object] = {
        "regional_pk": regional_pk,
        "purpose": purpose,
        "doctor_ref": doctor_ref,
        "status": status,
        "method": method,
        "recorded_by": principal.audit_id[:128],
        "proof_sha256": shown.sha256,
        "at": at,
    }
    pk = conn.execute(insert(Consent).values(**values).returning(Consent.id)).scalar_one()
    detail = {
        "consent_id": int(pk),
        "status": status,
        "method": method,
        "doctor_ref": doctor_ref,
        "proof_sha256": shown.sha256,
        "text_version": shown.version,
        "text_lang": shown.lang,
        "context": context,
    }
    record(
        conn,
        AuditEntry(
            actor_kind=str(principal.kind),
            actor_id=principal.audit_id,
            action="consent",
            outcome="ok",
            purpose=purpose,
            rule=status,
            regional_pk=regional_pk,
            detail=detail,
        ),
        at=at,
    )
    return ConsentRecord(
        int(pk),
        regional_pk,
        purpose,
        doctor_ref,
        status,
        method,
        principal.audit_id[:128],
        shown.sha256,
        at,
    )


def consent_history(conn: Connection, regional_pk: int) -> list[ConsentRecord]:
    """Every consent decision of a regional patient, newest first."""
    rows = conn.execute(
        select(Consent).where(Consent.regional_pk == regional_pk).order_by(Consent.id.desc())
    ).all()
    return [
        ConsentRecord(
            r.id,
            r.regional_pk,
            r.purpose,
            r.doctor_ref,
            r.status,
            r.method,
            r.recorded_by,
            r.proof_sha256,
            r.at,
        )
        for r in rows
    ]


def consents_in_force(conn: Connection, regional_pk: int) -> list[ConsentRecord]:
    """The decision in force per (purpose, doctor): the latest of each."""
    seen: set[tuple[str, str]] = set()
    current = []
    for row in consent_history(conn, regional_pk):
        key = (row.purpose, row.doctor_ref)
        if key not in seen:
            seen.add(key)
            current.append(row)
    return current
