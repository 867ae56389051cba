"""The one access policy on every HTTP path: who calls, why, and what they may have.

Every DICOMweb route (QIDO-RS, WADO-RS, rendered, metadata, STOW-RS) and the regional
APIs that return patient data take a :class:`Caller` (FastAPI dependency
:func:`caller_of`): the request's principal (:func:`~pacs_hub.trust.requests.principal_of`),
the purpose and, for break-glass, the reason.

Purpose (issue 4, one access policy; CSP L1110-4): ``care`` unless the request says otherwise
with the header ``X-Access-Purpose``:

* ``X-Access-Purpose: care`` (the default);
* ``X-Access-Purpose: emergency`` with ``X-Access-Reason: <text>`` (mandatory, at
  most 256 characters): break-glass access, allowed to the roles of
  ``PACS_HUB_BREAK_GLASS_ROLES`` and flagged for review in the audit trail. Without
  a reason the request is a 400. Any other purpose is a 400.

Answers: no credentials (or ones that do not verify) is 401 problem+json; a caller the
policy refuses is 403 problem+json that carries no data (no UID beyond the request's
own path, no count); a study the hub does not hold is 404. Queries are never refused:
their SQL is restricted (:func:`pacs_hub.trust.access.query_access`), so a caller sees
the studies they may see, and totals count those only.

With ``PACS_HUB_AUTH_REQUIRED=false`` nothing is checked nor recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from sqlalchemy import Connection

from pacs_hub.dicomweb.problems import Problem
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.storage.query import Query
from pacs_hub.trust.access import AuditWindow, authorize, query_access, record_query
from pacs_hub.trust.policy import AccessDenied, Decision, NotAuthenticated, Policy
from pacs_hub.trust.principal import Action, Kind, Principal, Purpose, Role
from pacs_hub.trust.requests import principal_of

PURPOSE_HEADER = "x-access-purpose"
REASON_HEADER = "x-access-reason"
HTTP_PURPOSES = (Purpose.CARE, Purpose.EMERGENCY)
MAX_REASON = 256


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls, why, and the policy that answers them (one per request)."""

    principal: Principal
    purpose: Purpose
    reason: str
    hub: HubState
    policy: Policy
    window: AuditWindow

    @property
    def enforced(self) -> bool:
        """False when the policy is off (``PACS_HUB_AUTH_REQUIRED=false``)."""
        return self.policy.enforced

    def restrict(self, conn: Connection, query: Query) -> Query:
        """``query`` matching only the studies this caller may see."""
        if not self.enforced:
            return query
        return query.restricted(
            query_access(self.policy, conn, self.principal, self.purpose, self.reason)
        )

    def audit_query(self, **detail: Any) -> None:
        """Record the query (one entry; its results were filtered by :meth:`restrict`)."""
        record_query(
            self.hub.database,
            self.policy,
            self.principal,
            self.purpose,
            reason=self.reason,
            detail=detail,
        )

    def decide(
        self,
        action: Action,
        *,
        study_uid: str | None = None,
        regional_pk: int | None = None,
        purpose: Purpose | None = None,
        every_time: bool = False,
        **detail: Any,
    ) -> Decision:
        """The decision for a study (or a patient, or none), audited; not raised.
        ``every_time``: record even an allowed repeat within the audit window."""
        return authorize(
            self.hub.database,
            self.policy,
            self.principal,
            action,
            purpose or self.purpose,
            study_uid=study_uid,
            regional_pk=regional_pk,
            reason=self.reason,
            detail=detail or None,
            window=None if every_time else self.window,
        )

    def check_study(self, action: Action, study_uid: str, **detail: Any) -> Decision:
        """Allowed, or 404 (the hub does not hold it) or 403 (the policy refuses)."""
        decision = self.decide(action, study_uid=study_uid, **detail)
        if decision.allowed:
            return decision
        if decision.rule == "not-found":
            raise Problem(404, "Not found", "no study with this Study Instance UID is stored")
        raise AccessDenied(f"not authorised to {action} this study for purpose {self.purpose}")

    def check(
        self, action: Action, what: str, purpose: Purpose | None = None, **detail: Any
    ) -> Decision:
        """An action on no study (a store, an administration): allowed or 403; recorded
        every time."""
        decision = self.decide(action, purpose=purpose, every_time=True, **detail)
        if not decision.allowed:
            raise AccessDenied(f"not authorised for {what}")
        return decision

    def require(self, what: str, *roles: Role) -> None:
        """Staff-only endpoints without patient data: one of ``roles`` (or a regional
        admin) or 403; the refusal is audited."""
        if not self.enforced or self.principal.has(Role.REGIONAL_ADMIN, *roles):
            return
        if self.principal.kind is Kind.SYSTEM:
            return
        self.decide(Action.ADMIN, every_time=True, resource=what)  # a deny: recorded
        raise AccessDenied(f"not authorised for {what}")


def _purpose(request: Request) -> tuple[Purpose, str]:
    raw = request.headers.get(PURPOSE_HEADER, "").strip().lower() or Purpose.CARE.value
    try:
        purpose = Purpose(raw)
    except ValueError:
        purpose = None
    if purpose not in HTTP_PURPOSES:
        raise Problem(
            400,
            "Invalid purpose",
            f"X-Access-Purpose {raw[:20]!r}: expected care (the default) or emergency",
        )
    reason = request.headers.get(REASON_HEADER, "").strip()
    if purpose is Purpose.EMERGENCY and not reason:
        raise Problem(
            400,
            "Reason required",
            "X-Access-Purpose: emergency (break-glass) needs X-Access-Reason: <why>",
        )
    if len(reason) > MAX_REASON:
        raise Problem(400, "Invalid reason", f"X-Access-Reason: at most {MAX_REASON} characters")
    return purpose, reason


def _window(request: Request) -> AuditWindow:
    state = request.app.state
    window = getattr(state, "audit_window", None)
    if window is None:
        window = state.audit_window = AuditWindow()
    return cast(AuditWindow, window)


def _policy(request: Request, hub: HubState) -> Policy:
    state = request.app.state
    policy = getattr(state, "access_policy", None)
    if policy is None:
        policy = state.access_policy = Policy(hub.settings)
    return cast(Policy, policy)


async def caller_of(
    request: Request,
    hub: Annotated[HubState, Depends(hub_state)],
    principal: Annotated[Principal, Depends(principal_of)],
) -> Caller:
    """FastAPI dependency: the :class:`Caller` of this request; 401 when the policy is on
    and the request carries no credentials, 400 for a bad purpose header."""
    policy = _policy(request, hub)
    if not policy.enforced:
        return Caller(principal, Purpose.CARE, "", hub, policy, _window(request))
    if principal.kind is Kind.ANONYMOUS:
        raise NotAuthenticated(
            "no credentials: send 'Authorization: Bearer <token>' (token from /auth/token)"
        )
    purpose, reason = _purpose(request)
    return Caller(principal, purpose, reason, hub, policy, _window(request))


CallerDep = Annotated[Caller, Depends(caller_of)]


def regional_admin(request: Request, caller: CallerDep) -> Caller:
    """FastAPI dependency of the administration APIs (establishments and nodes, the
    regional patient identity, routing): action admin for purpose admin, which the
    policy allows to regional administrators only; audited every time."""
    route = str(getattr(request.scope.get("route"), "path", ""))  # the template: no ids
    caller.check(Action.ADMIN, "this administration API", Purpose.ADMIN, route=route)
    return caller


AdminDep = Annotated[Caller, Depends(regional_admin)]


def with_query(search: Any, query: Query) -> Any:
    """A parsed search (a frozen dataclass with ``query``) with its query replaced."""
    return replace(search, query=query)
