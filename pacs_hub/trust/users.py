"""Accounts of the hub: local users with hashed passwords, and users mapped from OIDC.

A user has roles (:class:`~pacs_hub.trust.principal.Role`), works for establishments
(by code), and may carry a national professional id (RPPS) and an e-mail. A patient
account is linked to one regional patient (by its regional id). Passwords are hashed
with Argon2id (RFC 9106, argon2-cffi defaults); users who sign in through an external
OpenID provider have no password and are keyed by ``issuer|sub``.

On first start, a hub with no user gets ``admin`` (regional admin) with a random
password written once to ``DATA_DIR/initial-admin-password`` (mode 0600).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pacs_hub.errors import HubError
from pacs_hub.storage.database import Database
from pacs_hub.storage.models import Establishment, RegionalPatient
from pacs_hub.trust.models import User, UserEstablishment
from pacs_hub.trust.principal import Kind, Principal, Role

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
INITIAL_ADMIN = "admin"
INITIAL_PASSWORD_FILE = "initial-admin-password"
MIN_PASSWORD = 10
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class InvalidUser(HubError):
    """A username, role, password or link the registry does not accept."""

    http_status = 422
    title = "Invalid user"


class UnknownUser(HubError):
    """No user has this username."""

    http_status = 404
    title = "Unknown user"


class UserConflict(HubError):
    """The username is taken."""

    http_status = 409
    title = "User conflict"


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as the CLI and the API show it (never the password hash)."""

    username: str
    display_name: str
    roles: tuple[str, ...]
    establishments: tuple[str, ...]
    rpps: str
    email: str
    external_subject: str
    regional_id: str
    active: bool
    has_password: bool
    created_at: datetime


def hash_password(password: str) -> str:
    """Argon2id hash (RFC 9106) of ``password`` with a random salt."""
    if len(password) < MIN_PASSWORD:
        raise InvalidUser(f"a password needs at least {MIN_PASSWORD} characters")
    return _HASHER.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    """True when ``password`` matches; constant work even for users without a password."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def parse_roles(roles: Iterable[str]) -> list[Role]:
    """Roles from their names (``radiologist``...), each known; an unknown one is a 422."""
    parsed: list[Role] = []
    for name in roles:
        for part in name.split(","):
            value = part.strip()
            if not value:
                continue
            try:
                parsed.append(Role(value))
            except ValueError:
                known = ", ".join(r.value for r in Role)
                raise InvalidUser(f"unknown role {value!r} (expected one of {known})") from None
    return sorted(set(parsed))


def _check_username(username: str) -> str:
    if not USERNAME.match(username):
        raise InvalidUser(
            f"username {username!r}: 1-64 letters, digits, '.', '_', '@' or '-', expected"
        )
    return username


def _by_username(session: Session, username: str) -> User:
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None:
        raise UnknownUser(f"no user named {username!r} (see 'pacs-hub users list')")
    return user


def _establishment_pks(session: Session, codes: Iterable[str]) -> list[int]:
    pks: list[int] = []
    for code in codes:
        pk = session.scalar(select(Establishment.id).where(Establishment.code == code.strip()))
        if pk is None:
            raise InvalidUser(f"no establishment with code {code.strip()!r}")
        pks.append(pk)
    return pks


def _regional_pk(session: Session, regional_id: str) -> int | None:
    if not regional_id:
        return None
    pk = session.scalar(
        select(RegionalPatient.id).where(RegionalPatient.regional_id == regional_id)
    )
    if pk is None:
        raise InvalidUser(f"no regional patient with regional id {regional_id!r}")
    return pk


def _set_establishments(session: Session, user: User, pks: Iterable[int]) -> None:
    session.execute(delete(UserEstablishment).where(UserEstablishment.user_pk == user.id))
    session.add_all(UserEstablishment(user_pk=user.id, establishment_pk=pk) for pk in set(pks))


def _record(session: Session, user: User) -> UserRecord:
    codes = session.scalars(
        select(Establishment.code)
        .join(UserEstablishment, UserEstablishment.establishment_pk == Establishment.id)
        .where(UserEstablishment.user_pk == user.id)
        .order_by(Establishment.code)
    ).all()
    regional = ""
    if user.regional_patient_pk is not None:
        regional = (
            session.scalar(
                select(RegionalPatient.regional_id).where(
                    RegionalPatient.id == user.regional_patient_pk
                )
            )
            or ""
        )
    return UserRecord(
        username=user.username,
        display_name=user.display_name,
        roles=tuple(r for r in user.roles.split(",") if r),
        establishments=tuple(codes),
        rpps=user.rpps,
        email=user.email,
        external_subject=user.external_subject,
        regional_id=regional,
        active=user.active,
        has_password=bool(user.password_hash),
        created_at=user.created_at,
    )


def _check_patient_link(roles: list[Role], regional_pk: int | None) -> None:
    if Role.PATIENT in roles and regional_pk is None:
        raise InvalidUser("a patient account needs the regional id of the patient it is")


@dataclass(frozen=True, slots=True)
class UserFields:
    """What a user is made of (every field optional on update)."""

    display_name: str | None = None
    roles: tuple[str, ...] | None = None
    establishments: tuple[str, ...] | None = None
    rpps: str | None = None
    email: str | None = None
    regional_id: str | None = None
    password: str | None = None
    active: bool | None = None


def create_user(db: Database, username: str, fields: UserFields) -> UserRecord:
    """Register a user; 409 when the username is taken."""
    _check_username(username)
    roles = parse_roles(fields.roles or ())
    with db.session() as session:
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise UserConflict(f"a user named {username!r} exists")
        regional_pk = _regional_pk(session, fields.regional_id or "")
        _check_patient_link(roles, regional_pk)
        user = User(
            username=username,
            display_name=fields.display_name or "",
            password_hash=hash_password(fields.password) if fields.password else "",
            roles=",".join(roles),
            rpps=fields.rpps or "",
            email=fields.email or "",
            regional_patient_pk=regional_pk,
            active=True if fields.active is None else fields.active,
            created_at=datetime.now(UTC).replace(tzinfo=None),
        )
        session.add(user)
        session.flush()
        _set_establishments(session, user, _establishment_pks(session, fields.establishments or ()))
        session.flush()
        return _record(session, user)


def update_user(db: Database, username: str, fields: UserFields) -> UserRecord:
    """Change the fields given (roles and establishments replace the current sets)."""
    with db.session() as session:
        user = _by_username(session, username)
        if fields.display_name is not None:
            user.display_name = fields.display_name
        if fields.roles is not None:
            user.roles = ",".join(parse_roles(fields.roles))
        if fields.rpps is not None:
            user.rpps = fields.rpps
        if fields.email is not None:
            user.email = fields.email
        if fields.regional_id is not None:
            user.regional_patient_pk = _regional_pk(session, fields.regional_id)
        if fields.password is not None:
            user.password_hash = hash_password(fields.password)
        if fields.active is not None:
            user.active = fields.active
        _check_patient_link(parse_roles(user.roles.split(",")), user.regional_patient_pk)
        if fields.establishments is not None:
            _set_establishments(session, user, _establishment_pks(session, fields.establishments))
        session.flush()
        return _record(session, user)


def grant_establishment(db: Database, username: str, codes: Iterable[str]) -> UserRecord:
    """Add establishments (by code) to a user's."""
    with db.session() as session:
        user = _by_username(session, username)
        current = set(
            session.scalars(
                select(UserEstablishment.establishment_pk).where(
                    UserEstablishment.user_pk == user.id
                )
            )
        )
        _set_establishments(session, user, current | set(_establishment_pks(session, codes)))
        session.flush()
        return _record(session, user)


def get_user(db: Database, username: str) -> UserRecord:
    """One user by username (404 when unknown)."""
    with db.reader() as session:
        return _record(session, _by_username(session, username))


def list_users(db: Database) -> list[UserRecord]:
    """Every user, by username."""
    with db.reader() as session:
        users = session.scalars(select(User).order_by(User.username)).all()
        return [_record(session, u) for u in users]


def principal_for(session: Session, user: User) -> Principal:
    """The principal of an active user, with its roles and establishment keys."""
    establishments = session.scalars(
        select(UserEstablishment.establishment_pk).where(UserEstablishment.user_pk == user.id)
    ).all()
    return Principal(
        Kind.USER,
        user.username,
        roles=frozenset(parse_roles(user.roles.split(","))),
        establishments=frozenset(establishments),
        user_pk=user.id,
        rpps=user.rpps,
        email=user.email.strip().lower(),  # share grants store recipients in lower case
        regional_patient_pk=user.regional_patient_pk,
    )


def authenticate(db: Database, username: str, password: str) -> User | None:
    """The active user with this username and password, or None (same work either way)."""
    with db.reader() as session:
        user = session.scalars(select(User).where(User.username == username)).one_or_none()
        if user is None or not user.active:
            password_matches("", password)
            return None
        return user if password_matches(user.password_hash, password) else None


def ensure_initial_admin(db: Database, data_dir: Path) -> str | None:
    """With no user at all, create ``admin`` (regional admin); its password, else None.

    The password is also written to ``data_dir/initial-admin-password`` (mode 0600).
    """
    with db.reader() as session:
        if session.scalar(select(func.count()).select_from(User)):
            return None
    password = secrets.token_urlsafe(18)
    try:
        create_user(
            db,
            INITIAL_ADMIN,
            UserFields(
                display_name="Initial administrator",
                roles=(Role.REGIONAL_ADMIN.value,),
                password=password,
            ),
        )
    except UserConflict:  # another process created it first
        return None
    path = data_dir / INITIAL_PASSWORD_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    os.chmod(path, 0o600)
    return password
