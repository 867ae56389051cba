"""Admin API for users (``/api/users``): regional administrators only.

``GET /api/users``, ``POST /api/users`` ``{username, roles[], establishments[], rpps,
email, regional_id, password}`` (409 when taken), ``GET|PATCH /api/users/{username}``
(``active: false`` disables), ``POST /api/users/{username}/establishments``
``{codes[]}``. Every call passes the access policy (action admin, purpose admin) and
its decision is audited; errors are ``application/problem+json``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.trust import audit
from pacs_hub.trust import users as registry
from pacs_hub.trust.policy import NotAuthenticated, Policy
from pacs_hub.trust.principal import Action, Kind, Principal, Purpose
from pacs_hub.trust.requests import authenticator, principal_of

router = APIRouter()
Hub = Annotated[HubState, Depends(hub_state)]


def admin_caller(
    request: Request, hub: Hub, caller: Annotated[Principal, Depends(principal_of)]
) -> Principal:
    """The caller, once the policy allowed them to administer users (audited)."""
    if hub.settings.auth_required and caller.kind is Kind.ANONYMOUS:
        raise NotAuthenticated("no credentials: administering users needs a regional admin")
    with hub.database.session() as session:
        conn = session.connection()
        decision = Policy(hub.settings).decide(conn, caller, Action.ADMIN, Purpose.ADMIN)
        entry = audit.decision_entry(
            caller, Action.ADMIN, Purpose.ADMIN, decision, detail={"resource": "users"}
        )
        audit.record(conn, entry)
    decision.check("administering users")
    return caller


Admin = Annotated[Principal, Depends(admin_caller)]


class UserIn(BaseModel):
    """A user to register."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    display_name: str = Field(default="", max_length=128)
    roles: list[str] = Field(default_factory=list)
    establishments: list[str] = Field(default_factory=list, description="Establishment codes")
    rpps: str = Field(default="", max_length=32)
    email: str = Field(default="", max_length=128)
    regional_id: str = Field(default="", description="For a patient account: regional id")
    password: str | None = Field(default=None, description="None: no local sign-in")


class UserChange(BaseModel):
    """Fields to change; roles and establishments replace the current sets."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(default=None, max_length=128)
    roles: list[str] | None = None
    establishments: list[str] | None = None
    rpps: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=128)
    regional_id: str | None = None
    password: str | None = None
    active: bool | None = None


class EstablishmentCodes(BaseModel):
    """Establishments to add to a user's."""

    model_config = ConfigDict(extra="forbid")

    codes: list[str] = Field(min_length=1)


class UserOut(BaseModel):
    """A user (never their password hash)."""

    username: str
    display_name: str
    roles: list[str]
    establishments: list[str]
    rpps: str
    email: str
    regional_id: str
    external_subject: str
    active: bool
    has_password: bool
    created_at: datetime


def _out(record: registry.UserRecord) -> UserOut:
    return UserOut(
        username=record.username,
        display_name=record.display_name,
        roles=list(record.roles),
        establishments=list(record.establishments),
        rpps=record.rpps,
        email=record.email,
        regional_id=record.regional_id,
        external_subject=record.external_subject,
        active=record.active,
        has_password=record.has_password,
        created_at=record.created_at.replace(tzinfo=UTC),
    )


def _forget(request: Request) -> None:
    auth = authenticator(request)
    if auth is not None:
        auth.forget()  # a changed role or a disabled account counts at once


@router.get("/users", response_model=list[UserOut])
def list_users(hub: Hub, _admin: Admin) -> list[UserOut]:
    """Every user, by username."""
    return [_out(r) for r in registry.list_users(hub.database)]


@router.post("/users", status_code=201, response_model=UserOut)
def create_user(body: UserIn, hub: Hub, _admin: Admin, response: Response) -> UserOut:
    """Register a user."""
    record = registry.create_user(
        hub.database,
        body.username,
        registry.UserFields(
            display_name=body.display_name,
            roles=tuple(body.roles),
            establishments=tuple(body.establishments),
            rpps=body.rpps,
            email=body.email,
            regional_id=body.regional_id,
            password=body.password,
        ),
    )
    response.headers["Location"] = f"/api/users/{record.username}"
    return _out(record)


@router.get("/users/{username}", response_model=UserOut)
def get_user(username: str, hub: Hub, _admin: Admin) -> UserOut:
    """One user."""
    return _out(registry.get_user(hub.database, username))


@router.patch("/users/{username}", response_model=UserOut)
def change_user(
    username: str, body: UserChange, hub: Hub, _admin: Admin, request: Request
) -> UserOut:
    """Change a user (``active: false`` disables them; their tokens stop working)."""
    record = registry.update_user(
        hub.database,
        username,
        registry.UserFields(
            display_name=body.display_name,
            roles=tuple(body.roles) if body.roles is not None else None,
            establishments=tuple(body.establishments) if body.establishments is not None else None,
            rpps=body.rpps,
            email=body.email,
            regional_id=body.regional_id,
            password=body.password,
            active=body.active,
        ),
    )
    _forget(request)
    return _out(record)


@router.post("/users/{username}/establishments", response_model=UserOut)
def add_establishments(
    username: str, body: EstablishmentCodes, hub: Hub, _admin: Admin, request: Request
) -> UserOut:
    """Add establishments (by code) to a user's."""
    record = registry.grant_establishment(hub.database, username, body.codes)
    _forget(request)
    return _out(record)
