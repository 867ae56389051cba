"""``pacs-hub archive retention|destruction``: legal retention from the command line.

``retention`` shows each study's end of retention and the studies due, sets an
establishment's period, records a patient's date of death, places and releases legal
holds (:mod:`pacs_hub.archive.retention`). ``destruction`` runs the elimination of the
studies due: propose, sign (director, DIM, archives' visa), execute, with its record
(:mod:`pacs_hub.archive.destruction`). Every change is audited; the operator at the
command line is recorded as ``system:cli-<login>``.
"""

from __future__ import annotations

import getpass
from datetime import date
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select

from pacs_hub.archive import destruction, retention
from pacs_hub.cli_common import (
    AsJson,
    DataDir,
    console,
    echo_json,
    load_settings,
    open_database,
    print_table,
    refusals,
)
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.trust.models import User
from pacs_hub.trust.users import password_matches

retention_app = typer.Typer(
    help="Legal retention (CSP R. 1112-7): each study's end of retention, the studies due,"
    " periods, dates of death, legal holds.",
    no_args_is_help=True,
)
destruction_app = typer.Typer(
    help="Destroying the studies whose retention ended: propose, sign (director, DIM,"
    " archives' visa), execute; each destruction kept as a record.",
    no_args_is_help=True,
)
AsOf = Annotated[
    str | None, typer.Option("--as-of", help="The day to compute for (YYYYMMDD; default today)")
]
Establishment = Annotated[
    str | None, typer.Option("--establishment", help="One establishment (its code)")
]
RETENTION_COLUMNS = (
    "study_instance_uid",
    "establishment",
    "regional_id",
    "study_date",
    "last_contact",
    "retention_end",
    "held",
    "num_instances",
)


def actor() -> str:
    """How the audit trail names the operator at the command line."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "unknown"
    return f"system:cli-{login}"


def _day(as_of: str | None) -> date:
    return retention.parse_day(as_of) if as_of else retention.now().date()


def _print_studies(found: list[retention.StudyRetention], as_json: bool) -> None:
    if as_json:
        echo_json([s.as_dict() for s in found])
        return
    print_table(
        (
            "study",
            "establishment",
            "regional patient",
            "study date",
            "last contact",
            "ends",
            "held",
            "instances",
        ),
        (tuple(escape(str(getattr(s, c))) for c in RETENTION_COLUMNS) for s in found),
    )


@retention_app.command("due")
def due(
    establishment: Establishment = None,
    as_of: AsOf = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """The studies whose retention has ended: not held, in no open destruction.

    The end of retention is 20 years (PACS_HUB_RETENTION_YEARS, or the establishment's
    period) after the patient's last contact at the establishment, at least to their
    28th birthday, 10 years after a death that came less than 10 years after the last
    contact, lengthened by the days of released legal holds.
    """
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    with refusals(), database.reader() as session:
        found = retention.due(
            session.connection(), settings, _day(as_of), establishment=establishment
        )
    _print_studies(found, as_json)
    if not as_json:
        size = sum(s.size_bytes for s in found)
        console.print(f"{len(found)} stud(ies) due, {size / 1e6:.1f} MB")


@retention_app.command("show")
def show(
    study: Annotated[list[str], typer.Argument(help="Study Instance UID(s)")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """The retention of the given studies: last contact, end, held or not."""
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    with database.reader() as session:
        found = retention.studies(session.connection(), settings, study_uids=study)
    _print_studies(found, as_json)
    missing = set(study) - {s.study_instance_uid for s in found}
    if missing:
        console.print(f"[red]error:[/red] not in the archive: {escape(', '.join(sorted(missing)))}")
        raise typer.Exit(1)


@retention_app.command("period")
def period(
    establishment: Annotated[str, typer.Argument(help="The establishment's code")],
    years: Annotated[
        int | None, typer.Argument(help="Years after the last contact; omit for the hub's")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Set an establishment's retention period (private practice: 5 years at least)."""
    settings = load_settings(data_dir=data_dir)
    with refusals():
        retention.set_period(open_database(settings), actor(), establishment, years)
    shown = f"{years} years" if years else f"the hub's ({settings.retention_years} years)"
    console.print(f"{establishment}: records kept {shown} after the last contact")


@retention_app.command("death")
def death(
    regional_id: Annotated[str, typer.Argument(help="The regional patient")],
    day: Annotated[str, typer.Argument(help="Date of death, YYYYMMDD; 'none' clears it")],
    data_dir: DataDir = None,
) -> None:
    """Record a patient's date of death (their records are then kept 10 years from it
    when it came less than 10 years after their last contact)."""
    settings = load_settings(data_dir=data_dir)
    with refusals():
        when = None if day.lower() == "none" else retention.parse_day(day)
        retention.record_death(open_database(settings), actor(), regional_id, when)
    console.print(f"{regional_id}: date of death {'cleared' if when is None else 'recorded'}")


@retention_app.command("hold")
def hold(
    reason: Annotated[str, typer.Argument(help="The claim (a reference, never a name)")],
    study: Annotated[str, typer.Option("--study", help="Hold this study")] = "",
    patient: Annotated[
        str, typer.Option("--patient", help="Hold every study of this regional patient")
    ] = "",
    data_dir: DataDir = None,
) -> None:
    """Place a legal hold (a claim on medical liability): nothing held is destroyed,
    and once released its days are added to the retention."""
    settings = load_settings(data_dir=data_dir)
    with refusals():
        hold_id = retention.place_hold(
            open_database(settings), actor(), reason, study_uid=study, regional_id=patient
        )
    console.print(f"legal hold {hold_id} placed")


@retention_app.command("release")
def release(
    hold_id: Annotated[int, typer.Argument(help="The hold's id (see 'holds')")],
    data_dir: DataDir = None,
) -> None:
    """Release a legal hold."""
    settings = load_settings(data_dir=data_dir)
    with refusals():
        retention.release_hold(open_database(settings), actor(), hold_id)
    console.print(f"legal hold {hold_id} released")


@retention_app.command("holds")
def holds(
    every: Annotated[bool, typer.Option("--all", help="Released ones too")] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """The legal holds in place (or all)."""
    found = retention.holds(open_database(load_settings(data_dir=data_dir)), active_only=not every)
    if as_json:
        echo_json(found)
        return
    columns = ("id", "study_instance_uid", "regional_id", "reason", "placed_at", "released_at")
    print_table(columns, (tuple(escape(str(h[c] or "")) for c in columns) for h in found))


@destruction_app.command("propose")
def propose(
    establishment: Establishment = None,
    as_of: AsOf = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many studies")] = None,
    private: Annotated[
        bool,
        typer.Option("--private", help="A private establishment: no archives' visa is due"),
    ] = False,
    note: Annotated[str, typer.Option(help="A note kept with the record")] = "",
    data_dir: DataDir = None,
) -> None:
    """List the studies due in a new destruction, to be signed before it is executed."""
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    with refusals():
        new = destruction.propose(
            database,
            settings,
            actor(),
            _day(as_of),
            establishment=establishment,
            limit=limit,
            public=not private,
            note=note,
        )
    kept = destruction.record(database, new)
    console.print(
        f"destruction {new} proposed: {len(kept['studies'])} stud(ies);"
        f" to be signed as {', '.join(kept['signatures_required'])}"
    )


@destruction_app.command("sign")
def sign(
    destruction_id: Annotated[int, typer.Argument(help="The destruction's id")],
    capacity: Annotated[
        str, typer.Option("--as", help="director, dim, or archives (the archives' visa)")
    ],
    user: Annotated[str, typer.Option("--user", help="The signing user (asked their password)")],
    reference: Annotated[
        str, typer.Option(help="The archives' visa reference (for --as archives)")
    ] = "",
    password: Annotated[
        str | None, typer.Option(help="The user's password (asked when not given)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Sign a destruction as its director, its DIM doctor, or record the archives' visa.

    Each capacity is signed once, each by another user: a regional administrator or
    an administrator of the establishment, with their hub password (users signed in
    through Pro Santé Connect sign through the API).
    """
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    given = password if password is not None else typer.prompt("password", hide_input=True)
    with database.reader() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == user))
    if stored is None or not password_matches(stored, given):
        console.print("[red]error:[/red] unknown user or wrong password")
        raise typer.Exit(2)
    with refusals():
        state = destruction.sign(database, destruction_id, capacity, user, reference)
    console.print(f"destruction {destruction_id} signed as {capacity} by {user}: {state}")


@destruction_app.command("execute")
def execute(
    destruction_id: Annotated[int, typer.Argument(help="The destruction's id")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Destroy the studies of an approved destruction (or finish an interrupted one).

    Each study still due is deleted from the index and its blobs erased; one held since,
    or whose patient came back, is kept (the record says why). The record is written to
    DATA_DIR/archive/destructions/<id>.json. Runs beside a running hub.
    """
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    with refusals():
        kept = destruction.record(database, destruction_id)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=console, transient=as_json) as bar:
            task = bar.add_task("destroying", total=len(kept["studies"]))
            done = destruction.execute(
                settings,
                database,
                BlobStore(settings.data_dir),
                destruction_id,
                actor(),
                on_study=lambda _uid, _state: bar.advance(task),
            )
    if as_json:
        echo_json(done)
        return
    states = [s["state"] for s in done["studies"]]
    console.print(
        f"destruction {destruction_id} done: {states.count('destroyed')} stud(ies) destroyed,"
        f" {states.count('kept')} kept; record in"
        f" {destruction.folder(settings.data_dir) / f'{destruction_id}.json'}"
    )


@destruction_app.command("show")
def show_destruction(
    destruction_id: Annotated[int, typer.Argument(help="The destruction's id")],
    data_dir: DataDir = None,
) -> None:
    """A destruction as its record (JSON): state, signatures, studies."""
    with refusals():
        echo_json(
            destruction.record(open_database(load_settings(data_dir=data_dir)), destruction_id)
        )


@destruction_app.command("list")
def list_destructions(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Every destruction: id, state, studies, size."""
    found = destruction.listing(open_database(load_settings(data_dir=data_dir)))
    if as_json:
        echo_json(found)
        return
    columns = ("id", "state", "as_of", "proposed_at", "studies", "size_bytes")
    print_table(columns, (tuple(escape(str(d[c])) for c in columns) for d in found))


@destruction_app.command("cancel")
def cancel(
    destruction_id: Annotated[int, typer.Argument(help="The destruction's id")],
    reason: Annotated[str, typer.Option(help="Why")] = "",
    data_dir: DataDir = None,
) -> None:
    """Cancel a destruction not yet executing."""
    with refusals():
        destruction.cancel(
            open_database(load_settings(data_dir=data_dir)), destruction_id, actor(), reason
        )
    console.print(f"destruction {destruction_id} cancelled")
