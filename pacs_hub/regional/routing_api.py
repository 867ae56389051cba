"""Admin API for routing rules (``/api/routing/rules``) and the queue (``/api/routing/queue``).

* ``POST /api/routing/rules`` ``{name, conditions, destination, enabled}`` registers a
  rule (422 with nothing stored when the destination AE title or an establishment
  code is unknown, 409 when the name is taken); ``GET`` lists them;
  ``GET|DELETE /api/routing/rules/{name}`` reads or removes one (its queue items
  go with it); ``POST /api/routing/rules/{name}/enable|disable`` switches it.
* ``GET /api/routing/queue?study=&state=&rule=`` shows the state of each study to
  forward (queued, sending, sent, failed with the reason);
  ``POST /api/routing/queue/{id}/retry`` queues a failed or sent item again.

Conditions are described in :mod:`pacs_hub.regional.routing_rules`. Errors are
``application/problem+json``.

Access (issue 4): regional administrators only (the access policy's action admin,
purpose admin; :func:`pacs_hub.dicomweb.access.regional_admin`), every call audited.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from pacs_hub.dicomweb.access import regional_admin
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.regional import routing, routing_rules
from pacs_hub.web.params import RowId

router = APIRouter(dependencies=[Depends(regional_admin)])
Hub = Annotated[HubState, Depends(hub_state)]


class RuleIn(BaseModel):
    """A routing rule to register."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Unique name of the rule")
    conditions: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="establishment (code), modality, body_part, station: AND-ed, any-of lists,"
        " case-insensitive; {} matches every study",
    )
    destination: str = Field(min_length=1, max_length=16, description="AE title of a node")
    enabled: bool = True


class RuleOut(BaseModel):
    """A registered routing rule."""

    name: str
    conditions: dict[str, list[str]]
    destination: str
    enabled: bool
    created_at: datetime


class QueueItemOut(BaseModel):
    """One study to forward by one rule, and where it stands."""

    id: int
    rule: str
    study: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    created_at: datetime
    updated_at: datetime


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def _rule(record: routing_rules.RuleRecord) -> RuleOut:
    return RuleOut(
        name=record.name,
        conditions=record.conditions,
        destination=record.destination,
        enabled=record.enabled,
        created_at=_utc(record.created_at),
    )


def _item(record: routing.QueueRecord) -> QueueItemOut:
    return QueueItemOut(
        id=record.id,
        rule=record.rule,
        study=record.study_instance_uid,
        destination=record.destination,
        state=record.state,
        attempts=record.attempts,
        next_attempt_at=_utc(record.next_attempt_at),
        last_error=record.last_error,
        created_at=_utc(record.created_at),
        updated_at=_utc(record.updated_at),
    )


@router.get("/routing/rules", response_model=list[RuleOut])
def list_rules(hub: Hub) -> list[RuleOut]:
    """Every routing rule, by name."""
    return [_rule(r) for r in routing_rules.list_rules(hub.database)]


@router.post("/routing/rules", status_code=201, response_model=RuleOut)
def create_rule(body: RuleIn, hub: Hub) -> RuleOut:
    """Register a rule; nothing is stored when it names an unknown node or establishment."""
    record = routing_rules.create_rule(
        hub.database, body.name, body.conditions, body.destination, enabled=body.enabled
    )
    return _rule(record)


@router.get("/routing/rules/{name}", response_model=RuleOut)
def get_rule(name: str, hub: Hub) -> RuleOut:
    """One rule."""
    return _rule(routing_rules.get_rule(hub.database, name))


@router.post("/routing/rules/{name}/enable", response_model=RuleOut)
def enable_rule(name: str, hub: Hub) -> RuleOut:
    """Enable a rule: arrivals are queued and its queued items sent again."""
    return _rule(routing_rules.set_rule_enabled(hub.database, name, True))


@router.post("/routing/rules/{name}/disable", response_model=RuleOut)
def disable_rule(name: str, hub: Hub) -> RuleOut:
    """Disable a rule: nothing new is queued and its queued items wait."""
    return _rule(routing_rules.set_rule_enabled(hub.database, name, False))


@router.delete("/routing/rules/{name}", status_code=204)
def delete_rule(name: str, hub: Hub) -> Response:
    """Remove a rule and its queue items."""
    routing_rules.delete_rule(hub.database, name)
    return Response(status_code=204)


@router.get("/routing/queue", response_model=list[QueueItemOut])
def list_queue(
    hub: Hub,
    study: Annotated[str | None, Query(description="Study Instance UID")] = None,
    state: Annotated[str | None, Query(description="queued, sending, sent or failed")] = None,
    rule: Annotated[str | None, Query(description="Rule name")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[QueueItemOut]:
    """Queue items, newest first."""
    records = routing.list_queue(hub.database, study=study, state=state, rule=rule, limit=limit)
    return [_item(r) for r in records]


@router.post("/routing/queue/{item_id}/retry", response_model=QueueItemOut)
def retry_item(item_id: RowId, hub: Hub) -> QueueItemOut:
    """Queue a failed or sent item again (attempts reset)."""
    return _item(routing.retry_item(hub.database, item_id))
