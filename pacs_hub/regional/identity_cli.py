"""``pacs-hub patients ...``: the regional patient identity (france.md 3-4).

Read (show, find, candidates list, events) and change (link, merge, unmerge,
candidates accept/reject) the cross-reference of local identities. Every change is
recorded with its actor (``--actor``, default the login name) and can be reverted
with ``unmerge EVENT_ID``. Exit status 0 on success, 2 when refused (unknown id,
two different INS under one regional patient, already decided or reverted).
"""

from __future__ import annotations

import getpass
from dataclasses import asdict
from typing import Annotated

import typer
from rich.markup import escape

from pacs_hub.cli_common import AsJson, DataDir, console, database, echo_json, print_table, refusals
from pacs_hub.regional import identity_changes as changes
from pacs_hub.regional import identity_views as views
from pacs_hub.regional.identity import link_unlinked

app = typer.Typer(
    help="Regional patients: local identities linked by INS, traits or hand; merge, unmerge.",
    no_args_is_help=True,
)
candidates_app = typer.Typer(
    help="Links proposed by strict traits (birth name, first given name, sex, birth date).",
    no_args_is_help=True,
)
app.add_typer(candidates_app, name="candidates")
RegionalId = Annotated[str, typer.Argument(help="A regional id, e.g. RP00000042")]
ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who decides, recorded (default: login name)")
]


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "cli"


def _print_regional(view: views.RegionalView) -> None:
    state = "active" if view.active else f"inactive, merged into {view.merged_into}"
    console.print(f"[bold]{view.regional_id}[/bold] ({state})")
    if view.ins:
        console.print(f"INS {view.ins} ({view.ins_oid})")
    print_table(
        ("Patient ID", "Issuer", "INS", "Link", "Name", "Sex", "Birth date", "Studies"),
        (
            (
                escape(i.patient_id),
                escape(i.issuer_of_patient_id),
                i.ins or "-",
                i.link_method,
                escape(i.patient_name),
                i.patient_sex,
                i.patient_birth_date,
                str(len(i.studies)),
            )
            for i in view.identities
        ),
    )


@app.command("show")
def show(regional_id: RegionalId, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Show a regional patient and its local identities.

    Each identity: Patient ID, issuer, INS, link method, traits and its number of
    studies (--json: with the studies).
    """
    with refusals():
        view = views.regional_patient(database(data_dir), regional_id)
    if as_json:
        echo_json(asdict(view), ensure_ascii=False)
    else:
        _print_regional(view)


@app.command("find")
def find(
    ins: Annotated[str | None, typer.Option("--ins", help="INS matricule (15 characters)")] = None,
    patient_id: Annotated[
        str | None, typer.Option("--patient-id", help="A local Patient ID (with --issuer)")
    ] = None,
    issuer: Annotated[str, typer.Option(help="The local Patient ID's issuer")] = "",
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Find the regional patients holding an INS, or the one of a local identity.

    Exit status 1 when none is found.
    """
    if (ins is None) == (patient_id is None):
        raise typer.BadParameter("give either --ins or --patient-id", param_hint="--ins")
    db = database(data_dir)
    if ins is not None:
        found = views.find_by_ins(db, ins)
    else:
        regional_id = views.regional_of(db, str(patient_id), issuer)
        found = [views.regional_patient(db, regional_id)] if regional_id else []
    if as_json:
        echo_json([asdict(v) for v in found], ensure_ascii=False)
    else:
        for view in found:
            _print_regional(view)
    if not found:
        if not as_json:
            console.print("no regional patient found")
        raise typer.Exit(1)


@app.command("link")
def link(
    regional_id: RegionalId,
    patient_id: Annotated[str, typer.Argument(help="The local Patient ID to link")],
    issuer: Annotated[str, typer.Option(help="Its Issuer of Patient ID")] = "",
    actor: ActorOption = None,
    data_dir: DataDir = None,
) -> None:
    """Link a local identity (PATIENT_ID within --issuer) to a regional patient.

    Refused when the regional patient holds another INS. Revert with unmerge EVENT_ID.
    """
    with refusals():
        change = changes.link(database(data_dir), patient_id, issuer, regional_id, _actor(actor))
    console.print(f"linked to {change.regional_id} (event {change.event_id})")


@app.command("merge")
def merge(
    source: Annotated[str, typer.Argument(help="Regional id merged (becomes inactive)")],
    target: Annotated[str, typer.Argument(help="Regional id that survives")],
    actor: ActorOption = None,
    data_dir: DataDir = None,
) -> None:
    """Merge regional patient SOURCE into TARGET: every identity of SOURCE moves.

    Refused when they hold different INS. Revert with unmerge EVENT_ID.
    """
    with refusals():
        change = changes.merge(database(data_dir), source, target, _actor(actor))
    console.print(f"{source} merged into {change.regional_id} (event {change.event_id})")


@app.command("unmerge")
def unmerge(
    event_id: Annotated[int, typer.Argument(help="The event of a merge, link or accept")],
    actor: ActorOption = None,
    data_dir: DataDir = None,
) -> None:
    """Revert a merge, a manual link or an accepted candidate exactly.

    Every identity goes back where it was; refused if one changed since (revert the
    later change first).
    """
    with refusals():
        new = changes.revert(database(data_dir), event_id, _actor(actor))
    console.print(f"event {event_id} reverted (event {new})")


@app.command("events")
def events(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many")] = 20,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """The latest changes of the cross-reference, newest first."""
    found = views.list_events(database(data_dir), limit)
    if as_json:
        echo_json([asdict(e) for e in found])
        return
    print_table(
        ("Event", "Kind", "Actor", "At (UTC)", "Reverted by", "Identities moved"),
        (
            (
                str(e.id),
                e.kind,
                escape(e.actor),
                e.at,
                str(e.reverted_by or "-"),
                str(len(e.detail.get("moves", []))),
            )
            for e in found
        ),
    )


@app.command("backfill")
def backfill(data_dir: DataDir = None) -> None:
    """Link every local identity that has no regional patient yet.

    The running hub also does it every few minutes.
    """
    db = database(data_dir)
    total = 0
    while (done := link_unlinked(db)) > 0:
        total += done
    console.print(f"{total} local identities linked")


@candidates_app.command("list")
def list_candidates(
    status: Annotated[str, typer.Option(help="pending, accepted, rejected or all")] = "pending",
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Candidates: a local identity that may be the proposed regional patient."""
    if status not in ("pending", "accepted", "rejected", "all"):
        raise typer.BadParameter(
            "expected pending, accepted, rejected or all", param_hint="--status"
        )
    found = views.list_candidates(database(data_dir), None if status == "all" else status)
    if as_json:
        echo_json([asdict(c) for c in found], ensure_ascii=False)
        return
    print_table(
        ("Candidate", "Status", "Patient ID", "Issuer", "Now in", "Proposed", "Reason"),
        (
            (
                str(c.id),
                c.status,
                escape(c.patient_id),
                escape(c.issuer_of_patient_id),
                c.current_regional_id or "-",
                c.regional_id,
                c.reason,
            )
            for c in found
        ),
    )


@candidates_app.command("accept")
def accept(
    candidate_id: Annotated[int, typer.Argument(help="The candidate's number")],
    actor: ActorOption = None,
    data_dir: DataDir = None,
) -> None:
    """Accept a candidate: its identity joins the proposed regional patient.

    Revert with unmerge EVENT_ID.
    """
    with refusals():
        change = changes.accept_candidate(database(data_dir), candidate_id, _actor(actor))
    console.print(f"linked to {change.regional_id} (event {change.event_id})")


@candidates_app.command("reject")
def reject(
    candidate_id: Annotated[int, typer.Argument(help="The candidate's number")],
    actor: ActorOption = None,
    data_dir: DataDir = None,
) -> None:
    """Reject a candidate: the identities stay apart (recorded)."""
    with refusals():
        event = changes.reject_candidate(database(data_dir), candidate_id, _actor(actor))
    console.print(f"candidate {candidate_id} rejected (event {event})")
