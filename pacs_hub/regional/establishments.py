"""Establishments of the region: who owns which DICOM nodes and Patient ID issuers.

An establishment (a hospital or clinic, identified by a FINESS-like code) issues
local Patient IDs under one or more Issuers of Patient ID (PS3.3 C.7.1.1,
(0010,0021)); each issuer belongs to one establishment only. Its default issuer
is given, at ingest, to instances its nodes send without an issuer (issue 5,
"one regional patient identity"). The establishment's nodes are registered in
:mod:`pacs_hub.regional.nodes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pacs_hub.errors import HubError
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, EstablishmentIssuer, Node

CODE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


class InvalidEstablishment(HubError):
    """A code, name or issuer the registry does not accept."""

    http_status = 422
    title = "Invalid establishment"


class UnknownEstablishment(HubError):
    """No establishment has this code (or name)."""

    http_status = 404
    title = "Unknown establishment"


class EstablishmentConflict(HubError):
    """The change contradicts what is registered (duplicate code, issuer owned, nodes)."""

    http_status = 409
    title = "Establishment conflict"


@dataclass(frozen=True, slots=True)
class EstablishmentRecord:
    """An establishment with its issuers and the AE titles of its nodes."""

    code: str
    name: str
    default_issuer: str
    issuers: tuple[str, ...]
    nodes: tuple[str, ...]
    created_at: datetime


def validate_issuer(issuer: str) -> str:
    """Issuer of Patient ID is LO (PS3.5 6.2): at most 64 characters, no backslash."""
    value = issuer.strip()
    if not 0 < len(value) <= 64:
        raise InvalidEstablishment(f"issuer must be 1 to 64 characters, got {len(value)}")
    if any(c == "\\" or not c.isprintable() for c in value):
        raise InvalidEstablishment(f"issuer {value!r} has a backslash or control character")
    return value


def _check_code(code: str) -> str:
    value = code.strip()
    if not CODE_PATTERN.match(value):
        raise InvalidEstablishment(
            f"code must be 1-32 letters, digits, '.', '_' or '-' (e.g. a FINESS), got {value!r}"
        )
    return value


def _check_name(name: str) -> str:
    value = name.strip()
    if not 0 < len(value) <= 128 or not value.isprintable():
        raise InvalidEstablishment(f"name must be 1 to 128 printable characters, got {value!r}")
    return value


def _record(session: Session, est: Establishment) -> EstablishmentRecord:
    issuers = session.scalars(
        select(EstablishmentIssuer.issuer)
        .where(EstablishmentIssuer.establishment_pk == est.id)
        .order_by(EstablishmentIssuer.issuer)
    ).all()
    nodes = session.scalars(
        select(Node.ae_title).where(Node.establishment_pk == est.id).order_by(Node.ae_title)
    ).all()
    return EstablishmentRecord(
        est.code, est.name, est.default_issuer, tuple(issuers), tuple(nodes), est.created_at
    )


def _by_code(session: Session, code: str) -> Establishment:
    est = session.scalars(
        select(Establishment).where(Establishment.code == code.strip())
    ).one_or_none()
    if est is None:
        raise UnknownEstablishment(f"no establishment with code {code.strip()!r}")
    return est


def resolve_establishment(session: Session, code_or_name: str) -> Establishment:
    """The establishment whose code, else whose name, is ``code_or_name``."""
    value = code_or_name.strip()
    found = session.scalars(
        select(Establishment).where(or_(Establishment.code == value, Establishment.name == value))
    ).all()
    by_code = [e for e in found if e.code == value]
    if by_code:
        return by_code[0]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UnknownEstablishment(
            f"no establishment with code or name {value!r} (see 'pacs-hub establishments list')"
        )
    codes = ", ".join(sorted(e.code for e in found))
    raise EstablishmentConflict(f"several establishments are named {value!r} ({codes}): use a code")


def _set_issuers(session: Session, est: Establishment, issuers: Iterable[str]) -> None:
    """Make ``issuers`` (plus the default issuer) exactly those ``est`` owns."""
    wanted = {validate_issuer(i) for i in issuers}
    if est.default_issuer:
        wanted.add(est.default_issuer)
    owners = session.execute(
        select(EstablishmentIssuer.issuer, Establishment.code)
        .join(Establishment, Establishment.id == EstablishmentIssuer.establishment_pk)
        .where(EstablishmentIssuer.issuer.in_(wanted), Establishment.id != est.id)
    ).all()
    if owners:
        taken = "; ".join(f"{issuer!r} belongs to {code}" for issuer, code in sorted(owners))
        raise EstablishmentConflict(f"an issuer belongs to one establishment only: {taken}")
    session.execute(
        delete(EstablishmentIssuer).where(
            EstablishmentIssuer.establishment_pk == est.id,
            EstablishmentIssuer.issuer.not_in(wanted),
        )
    )
    held = set(
        session.scalars(
            select(EstablishmentIssuer.issuer).where(EstablishmentIssuer.establishment_pk == est.id)
        )
    )
    session.add_all(
        EstablishmentIssuer(establishment_pk=est.id, issuer=i) for i in sorted(wanted - held)
    )
    session.flush()


def create_establishment(
    db: Database, code: str, name: str, default_issuer: str = "", issuers: Iterable[str] = ()
) -> EstablishmentRecord:
    """Register an establishment; 409 when the code exists or an issuer is owned."""
    code, name = _check_code(code), _check_name(name)
    default = validate_issuer(default_issuer) if default_issuer.strip() else ""
    try:
        with db.session() as session:
            if session.scalars(select(Establishment.id).where(Establishment.code == code)).first():
                raise EstablishmentConflict(f"an establishment with code {code!r} exists")
            est = Establishment(
                code=code,
                name=name,
                default_issuer=default,
                created_at=datetime.now(UTC).replace(tzinfo=None),
            )
            session.add(est)
            session.flush()
            _set_issuers(session, est, issuers)
            return _record(session, est)
    except IntegrityError as exc:  # a concurrent writer took the code or an issuer
        raise EstablishmentConflict(f"establishment {code!r} conflicts: {exc.orig}") from exc


def update_establishment(
    db: Database,
    code: str,
    *,
    name: str | None = None,
    default_issuer: str | None = None,
    issuers: Iterable[str] | None = None,
) -> EstablishmentRecord:
    """Change the given fields; ``issuers`` replaces the owned set (the default stays in it).

    Instances already indexed keep the issuer they were indexed under.
    """
    try:
        with db.session() as session:
            est = _by_code(session, code)
            if name is not None:
                est.name = _check_name(name)
            if default_issuer is not None:
                est.default_issuer = (
                    validate_issuer(default_issuer) if default_issuer.strip() else ""
                )
            current = _record(session, est).issuers
            _set_issuers(session, est, current if issuers is None else issuers)
            return _record(session, est)
    except IntegrityError as exc:
        raise EstablishmentConflict(f"establishment {code!r} conflicts: {exc.orig}") from exc


def list_establishments(db: Database) -> list[EstablishmentRecord]:
    """Every establishment, by code."""
    with db.reader() as session:
        found = session.scalars(select(Establishment).order_by(Establishment.code)).all()
        return [_record(session, est) for est in found]


def get_establishment(db: Database, code: str) -> EstablishmentRecord:
    """The establishment with this code (:class:`UnknownEstablishment` otherwise)."""
    with db.reader() as session:
        return _record(session, _by_code(session, code))


def remove_establishment(db: Database, code: str) -> None:
    """Forget an establishment and its issuers; 409 while nodes are attached to it."""
    with db.session() as session:
        est = _by_code(session, code)
        attached = session.scalar(
            select(func.count()).select_from(Node).where(Node.establishment_pk == est.id)
        )
        if attached:
            raise EstablishmentConflict(
                f"establishment {est.code!r} still owns {attached} node(s):"
                " remove them or attach them elsewhere first"
            )
        session.execute(
            delete(EstablishmentIssuer).where(EstablishmentIssuer.establishment_pk == est.id)
        )
        session.delete(est)
