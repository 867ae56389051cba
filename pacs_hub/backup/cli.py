"""``pacs-hub backup`` (enrol, backfill, status, reconcile, standin), ``pacs-hub restore``."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pacs_hub.backup import backfill as backfills
from pacs_hub.backup import inventory, state
from pacs_hub.backup import reconcile as reconciliation
from pacs_hub.backup import restore as restores
from pacs_hub.backup import status as statuses
from pacs_hub.cli_common import DataDir, load_settings, open_database
from pacs_hub.errors import HubError

app = typer.Typer(
    help="Backup target for hospitals: enrol a PACS, backfill, reconcile, stand in (PCA).",
    no_args_is_help=True,
)
console = Console()
progress_console = Console(stderr=True)  # stdout stays clean for --json
Code = Annotated[str, typer.Argument(help="Establishment code")]


def _fail(exc: HubError) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(exc.message)}")
    return typer.Exit(2)


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("instances {task.fields[mb]} MB"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=progress_console,
        transient=False,
    )


@app.command("enrol")
def enrol(
    code: Code,
    node: Annotated[str, typer.Option(help="AE title of its PACS (default: its only one)")] = "",
    backfill: Annotated[bool, typer.Option(help="Request the backfill of its history")] = True,
    data_dir: DataDir = None,
) -> None:
    """Enrol an establishment's PACS as a backup client (idempotent)."""
    settings = load_settings(data_dir=data_dir)
    try:
        client = inventory.enrol(settings, open_database(settings), code, node)
        if backfill:
            backfills.request(settings, client.code)
    except HubError as exc:
        raise _fail(exc) from exc
    console.print(
        f"{client.code} enrolled: PACS {client.node.ae_title}"
        + (", backfill requested" if backfill else "")
    )


@app.command("backfill")
def backfill(
    code: Code,
    since: Annotated[str, typer.Option(help="Oldest Study Date YYYYMMDD")] = "",
    until: Annotated[str, typer.Option(help="Newest Study Date YYYYMMDD")] = "",
    detach: Annotated[bool, typer.Option(help="Only request it (the hub's task runs it)")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the current one, do not restart")] = False,
    data_dir: DataDir = None,
) -> None:
    """Backfill the PACS's history into the hub, with progress; resumable.

    Runs here unless the hub already runs it, in which case its progress is shown.
    Exit status 0 when every study is safe in the hub, 1 otherwise.
    """
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    try:
        current = state.load(settings, code).get("backfill") or {}
        if not (resume and current.get("state") in ("requested", "running")):
            backfills.request(settings, code, since, until)
        if detach:
            console.print(f"backfill of {code} requested")
            return
        with _bar() as bar:
            task = bar.add_task("studies 0/?", total=None, mb="0")

            def show(p: backfills.Progress) -> None:
                bar.update(
                    task,
                    total=p.instances_total or None,
                    completed=p.instances_done,
                    description=f"studies {p.studies_done}/{p.studies_total}",
                    mb=f"{p.bytes_done / 1e6:.1f}/{p.bytes_total / 1e6:.1f}",
                )

            result = backfills.run_backfill(settings, database, code, report=show)
            while result is None or result.state in ("requested", "running"):
                time.sleep(0.5)  # the hub runs it: follow its state file
                result = backfills.progress_of(code, state.load(settings, code))
                show(result)
                if result.state not in ("requested", "running"):
                    break
            show(result)
    except HubError as exc:
        raise _fail(exc) from exc
    console.print(
        f"backfill {result.state}: {result.studies_done}/{result.studies_total} studies,"
        f" {result.instances_done} instances" + (f" ({result.error})" if result.error else "")
    )
    if result.state != "done":
        raise typer.Exit(1)


@app.command("status")
def status(
    code: Annotated[str, typer.Argument(help="Establishment code (all when omitted)")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    data_dir: DataDir = None,
) -> None:
    """Backup status: stand-in, backfill progress, last reconciliation, RPO."""
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    try:
        rows = [
            statuses.describe(settings, database, c)
            for c in ([code] if code else state.enrolled(settings))
        ]
    except HubError as exc:
        raise _fail(exc) from exc
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("establishment", "PACS", "stand-in", "backfill", "last matched", "RPO", "alert")
    for row in rows:
        b = row["backfill"]
        rpo = row["rpo_seconds"]
        table.add_row(
            row["establishment"],
            str(row["node"]),
            f"{row['standin_mode']} ({'active' if row['standin_active'] else 'idle'})",
            f"{b['state']} {b['studies_done']}/{b['studies_total']}",
            str(row["last_matched"] or "never"),
            "" if rpo is None else f"{rpo / 60:.0f} min",
            "ALERT" if row["rpo_alert"] else "",
        )
    console.print(table)


@app.command("reconcile")
def reconcile(
    code: Code,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    data_dir: DataDir = None,
) -> None:
    """Compare the PACS (C-FIND studies and series) with the hub: missing, extra, different.

    Exit status 0 when nothing is missing or different, 1 otherwise.
    """
    settings = load_settings(data_dir=data_dir)
    try:
        found = reconciliation.reconcile(settings, open_database(settings), code)
    except HubError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps(found.as_json()))
    else:
        console.print(
            f"{code}: PACS {found.pacs_studies} studies, hub {found.hub_studies}; missing "
            f"{len(found.missing)}, different {len(found.different)}, extra {len(found.extra)},"
            f" destroyed at the end of their retention {len(found.destroyed)};"
            f" RPO {found.rpo_seconds / 60:.0f} min{' ALERT' if found.rpo_alert else ''};"
            f" last matched {found.last_matched or 'never'}"
        )
    if not found.matched:
        raise typer.Exit(1)


@app.command("standin")
def standin(
    code: Code,
    mode: Annotated[str, typer.Argument(help="on, off or auto (on while its PACS is down)")],
    port: Annotated[
        int | None,
        typer.Option(
            help="A DICOM port of the stand-in's own (0: none), for sites whose modalities"
            " can only be pointed at another IP:port; opened within seconds, no restart"
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Declare the establishment's PACS down (on) or up (off), or follow its health (auto).

    While active, the hub answers as the PACS's AE title on its DICOM port
    (PACS_HUB_DICOM_PORT) and, with --port, on a port of the stand-in's own,
    where any called AE title is served as that PACS (associations there are
    refused while the stand-in is not active).
    """
    settings = load_settings(data_dir=data_dir)
    try:
        statuses.set_standin(settings, code, mode, port)
    except HubError as exc:
        raise _fail(exc) from exc
    shown = f" (port {port})" if port else " (no port of its own)" if port == 0 else ""
    console.print(f"stand-in for {code}: {mode}{shown}")


def _print_report(report: dict[str, Any]) -> None:
    for refusal in report["refused"]:
        console.print(
            f"refused: {refusal['sop_instance_uid']} (class {refusal['sop_class_uid']}, study "
            f"{refusal['study']}): {escape(refusal['reason'])}"
        )
    for problem in report["count_mismatches"]:
        console.print(f"counts differ on the PACS: study {problem['study']}: {problem['series']}")
    check = report["byte_check"]
    console.print(
        f"byte check: {check['identical']}/{check['sampled']} sampled instance(s) identical"
    )
    console.print(("[green]" if report["complete"] else "[red]") + escape(report["verdict"]))


def restore(
    establishment: Annotated[str, typer.Option(help="Establishment code")],
    to: Annotated[str, typer.Option(help="AE title of the registered node to restore to")],
    since: Annotated[str, typer.Option(help="Only studies received since YYYY-MM-DD")] = "",
    studies: Annotated[
        list[str] | None, typer.Option(help="Only these Study Instance UIDs")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Start over instead of resuming")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    data_dir: DataDir = None,
) -> None:
    """Restore an establishment's studies from the hub to its rebuilt PACS (PRA).

    Parallel associations, progress and ETA, resumable (run it again after an
    interruption), verified by C-FIND counts and a byte-identical sample.
    Exit status 0 when complete, 1 when anything was refused or differs.
    """
    settings = load_settings(data_dir=data_dir)
    try:
        with _bar() as bar:
            task = bar.add_task("studies", total=None, mb="0")

            def show(p: restores.RestoreProgress) -> None:
                bar.update(
                    task,
                    total=p.instances_total,
                    completed=p.instances_done,
                    description=f"studies {p.studies_done}/{p.studies_total}",
                    mb=f"{p.bytes_done / 1e6:.1f}/{p.bytes_total / 1e6:.1f}",
                )

            report = restores.restore(
                settings,
                open_database(settings),
                establishment,
                to,
                since=since,
                studies=studies or (),
                fresh=fresh,
                report=show,
            )
    except HubError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps(report))
    else:
        _print_report(report)
    if not report["complete"]:
        raise typer.Exit(1)
