"""``pacs-hub audit list|verify|export|prune``: the audit trail from the command line.

``verify`` exits 1 and names each entry where the hash chain breaks; ``export``
writes one DICOM audit message (PS3.15 A.5) per file, each validated against the
schema (exit 2 if one does not). Each command that reads the trail records it
(Audit Log Used), as the hub's own operator (``system:pacs-hub``, via the CLI).
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from sqlalchemy import func, select

from pacs_hub.cli_common import (
    DataDir,
    console,
    database,
    load_settings,
    open_database,
    print_table,
    refusals,
)
from pacs_hub.storage.database import Database
from pacs_hub.trust import audit
from pacs_hub.trust.atna import AuditSource, InvalidAuditMessage, messages
from pacs_hub.trust.audit_query import (
    AuditFilter,
    AuditRecord,
    find_entries,
    iter_entries,
    record_read,
    resolve_patient,
)
from pacs_hub.trust.audit_tasks import prune_expired
from pacs_hub.trust.models import AuditEvent
from pacs_hub.trust.principal import SYSTEM

app = typer.Typer(
    help="The audit trail: list, verify the hash chain, export as DICOM audit messages.",
    no_args_is_help=True,
)
Patient = Annotated[str, typer.Option(help="Regional patient id (RP...)")]
User = Annotated[str, typer.Option(help="Actor id (user:alice, node:CT1) or username")]
StudyUid = Annotated[str, typer.Option("--study", help="Study Instance UID")]
ActionOpt = Annotated[str, typer.Option("--action", help="query, view, retrieve, share, ...")]
Outcome = Annotated[str, typer.Option(help="allow, deny, ok, failed")]
Since = Annotated[datetime | None, typer.Option(help="From this time (UTC)")]
Until = Annotated[datetime | None, typer.Option(help="Before this time (UTC)")]


def _how(command: str) -> str:
    return f"cli-{command} ({getpass.getuser()})"


def _filter(
    database: Database,
    patient: str,
    user: str,
    study: str,
    action: str,
    outcome: str,
    since: datetime | None,
    until: datetime | None,
) -> AuditFilter | None:
    regional_pk = None
    if patient:
        with database.read_connection() as conn:
            regional_pk = resolve_patient(conn, patient)
        if regional_pk is None:
            return None
    return AuditFilter(regional_pk, user, study, action, outcome, since, until)


def _read_recorded(database: Database, flt: AuditFilter, how: str, returned: int) -> None:
    with database.session() as session:
        record_read(session.connection(), SYSTEM, flt, allowed=True, how=how, returned=returned)


def _as_json(rec: AuditRecord) -> dict[str, object]:
    return {
        "id": rec.id,
        "at": rec.at.replace(tzinfo=UTC).isoformat(),
        "actor": rec.actor_id,
        "action": rec.action,
        "purpose": rec.purpose,
        "outcome": rec.outcome,
        "rule": rec.rule,
        "patient": rec.regional_id,
        "study_uid": rec.study_uid,
        "reason": rec.reason,
        "detail": rec.detail,
    }


@app.command("list")
def list_entries(
    patient: Patient = "",
    user: User = "",
    study: StudyUid = "",
    action: ActionOpt = "",
    outcome: Outcome = "",
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Entries per page")] = 50,
    before: Annotated[int | None, typer.Option(help="Entries older than this id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    data_dir: DataDir = None,
) -> None:
    """Entries matching every filter given, newest first, one page at a time."""
    db = database(data_dir)
    flt = _filter(db, patient, user, study, action, outcome, since, until)
    entries: list[AuditRecord] = []
    next_before = None
    if flt is not None:
        with db.read_connection() as conn:
            page = find_entries(conn, flt, limit=limit, before=before)
        entries, next_before = page.entries, page.next_before
        _read_recorded(db, flt, _how("list"), len(entries))
    if as_json:
        typer.echo(json.dumps({"entries": [_as_json(r) for r in entries], "next": next_before}))
        return
    print_table(
        ("id", "at (UTC)", "actor", "action", "outcome", "rule", "patient", "study"),
        (
            (
                str(rec.id),
                rec.at.isoformat(timespec="seconds"),
                escape(rec.actor_id),
                rec.action,
                rec.outcome,
                rec.rule,
                rec.regional_id or "-",
                rec.study_uid or "-",
            )
            for rec in entries
        ),
    )
    if next_before is not None:
        console.print(f"more: --before {next_before}")


@app.command("verify")
def verify(data_dir: DataDir = None) -> None:
    """Recompute the hash chain; exit 1 and name each entry where it breaks."""
    db = database(data_dir)
    with db.read_connection() as conn:
        breaks = audit.verify(conn)
        kept = conn.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    _read_recorded(db, AuditFilter(), _how("verify"), kept)
    if not breaks:
        console.print(f"audit trail intact: {kept} entries verified")
        return
    for brk in breaks:
        console.print(f"[red]entry {brk.entry_id}:[/red] {escape(brk.problem)}")
    console.print(f"audit trail BROKEN at {len(breaks)} place(s)")
    raise typer.Exit(1)


@app.command("export")
def export(
    out: Annotated[Path, typer.Option(help="Folder for the XML files (created)")],
    patient: Patient = "",
    user: User = "",
    study: StudyUid = "",
    action: ActionOpt = "",
    outcome: Outcome = "",
    since: Since = None,
    until: Until = None,
    data_dir: DataDir = None,
) -> None:
    """Write matching entries as DICOM audit messages (PS3.15 A.5), oldest first,
    one file per message: ``<entry id>-<n>-<EventID>.xml``."""
    settings = load_settings(data_dir=data_dir)
    db = open_database(settings)
    flt = _filter(db, patient, user, study, action, outcome, since, until)
    out.mkdir(parents=True, exist_ok=True)
    source = AuditSource.of(settings)
    written = 0
    with refusals(InvalidAuditMessage), db.read_connection() as conn:
        for rec in iter_entries(conn, flt) if flt is not None else iter(()):
            for n, msg in enumerate(messages(rec, source), start=1):
                (out / f"{rec.id:08d}-{n}-{msg.event_code}.xml").write_bytes(msg.xml)
                written += 1
    if flt is not None:
        _read_recorded(db, flt, _how("export"), written)
    console.print(f"{written} audit message(s) written to {escape(str(out))}")


@app.command("prune")
def prune(data_dir: DataDir = None) -> None:
    """Apply the retention now (PACS_HUB_AUDIT_RETENTION_DAYS); the hub does it hourly.
    Exit 2, pruning nothing, when the entries to prune do not verify."""
    settings = load_settings(data_dir=data_dir)
    with refusals(audit.AuditChainBroken):
        count = prune_expired(settings, open_database(settings))
    console.print(
        f"{count} entr{'y' if count == 1 else 'ies'} older than"
        f" {settings.audit_retention_days} days pruned"
    )
