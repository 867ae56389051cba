"""Admin API ``/api/backup`` (regional administrators; every call audited by the policy).

* ``GET /api/backup`` every enrolled establishment's status; ``GET /api/backup/{code}``
  one (stand-in, backfill progress with studies and bytes done/total and ETA, last
  reconciliation, RPO and its alert state, last restore);
* ``POST /api/backup/{code}/enrol`` ``{node?, backfill?}``;
* ``POST /api/backup/{code}/backfill`` ``{since?, until?}`` requests a backfill (the
  hub's ``backup-backfill`` task runs it; follow it with GET);
* ``POST /api/backup/{code}/reconcile`` runs a reconciliation and answers its report;
* ``PUT /api/backup/{code}/standin`` ``{mode: on|off|auto, port?}`` (``port``: a DICOM
  port of the stand-in's own, opened by the gateways within seconds; 0: none).

Restores are run by ``pacs-hub restore`` (a long job with its own progress bar).
Errors are ``application/problem+json`` (the hub's error catalogue).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from pacs_hub.backup import backfill, inventory, reconcile, state, status
from pacs_hub.dicomweb.state import HubState, hub_state
from pacs_hub.trust.users_api import admin_caller

router = APIRouter(prefix="/backup", dependencies=[Depends(admin_caller)])
Hub = Annotated[HubState, Depends(hub_state)]


class EnrolIn(BaseModel):
    """Enrolment of an establishment's PACS."""

    model_config = ConfigDict(extra="forbid")
    node: str = Field(default="", max_length=16, description="AE title (default: its only PACS)")
    backfill: bool = True


class BackfillIn(BaseModel):
    """A backfill request (Study Date bounds, YYYYMMDD)."""

    model_config = ConfigDict(extra="forbid")
    since: str = Field(default="", pattern=r"^(\d{8})?$")
    until: str = Field(default="", pattern=r"^(\d{8})?$")


class StandInIn(BaseModel):
    """The stand-in mode."""

    model_config = ConfigDict(extra="forbid")
    mode: str = Field(pattern="^(on|off|auto)$")
    port: int | None = Field(default=None, ge=0, le=65535)
    """A DICOM port of the stand-in's own (0: none; absent: unchanged), opened within seconds."""


@router.get("")
def list_backups(hub: Hub) -> list[dict[str, Any]]:
    """Every enrolled establishment's backup status."""
    return [status.describe(hub.settings, hub.database, c) for c in state.enrolled(hub.settings)]


@router.get("/{code}")
def get_backup(code: str, hub: Hub) -> dict[str, Any]:
    """One establishment's backup status."""
    return status.describe(hub.settings, hub.database, code)


@router.post("/{code}/enrol", status_code=201)
def enrol(code: str, body: EnrolIn, hub: Hub) -> dict[str, Any]:
    """Enrol the establishment's PACS (idempotent)."""
    client = inventory.enrol(hub.settings, hub.database, code, body.node)
    if body.backfill:
        backfill.request(hub.settings, client.code)
    return status.describe(hub.settings, hub.database, client.code)


@router.post("/{code}/backfill", status_code=202)
def request_backfill(code: str, body: BackfillIn, hub: Hub) -> dict[str, Any]:
    """Request a backfill; the hub's task runs it."""
    state.load(hub.settings, code)
    backfill.request(hub.settings, code, body.since, body.until)
    return status.describe(hub.settings, hub.database, code)


@router.post("/{code}/reconcile")
def run_reconcile(code: str, hub: Hub) -> dict[str, Any]:
    """Reconcile the PACS with the hub now."""
    return reconcile.reconcile(hub.settings, hub.database, code).as_json()


@router.put("/{code}/standin")
def put_standin(code: str, body: StandInIn, hub: Hub) -> dict[str, Any]:
    """Set the stand-in mode."""
    status.set_standin(hub.settings, code, body.mode, body.port)
    return status.describe(hub.settings, hub.database, code)
