"""``pacs-hub federation``: federated query and retrieve on demand from the command line.

``find`` queries the hub's archive and every PACS node (role pacs) at once and prints
where each study lives; ``retrieve`` pulls a study into the hub with a progress bar;
``jobs`` lists the retrieve jobs. They work on the hub's data folder (settings from
``PACS_HUB_*``); ``retrieve`` needs the hub running, since the PACS sends the study
to the hub's DICOM port (C-MOVE to the hub's AE title).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pacs_hub.cli_common import DataDir, load_settings, open_database
from pacs_hub.errors import HubError, InvalidQuery
from pacs_hub.regional.federation import (
    FederatedMatch,
    FederatedResult,
    federated_find,
    remote_source,
)
from pacs_hub.regional.pull import get_job, list_jobs, pull_study
from pacs_hub.storage.query import ATTRIBUTES, Level, attribute_value, parse_query

app = typer.Typer(
    help="Federated query and retrieve: the hub's archive and every establishment PACS"
    " (nodes with role pacs) searched as one; studies pulled into the hub on demand.",
    no_args_is_help=True,
)
console = Console()
SHOWN = {
    Level.STUDY: ("StudyDate", "ModalitiesInStudy", "StudyDescription", "PatientID"),
    Level.SERIES: ("StudyInstanceUID", "Modality", "SeriesNumber", "SeriesDescription"),
    Level.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "InstanceNumber"),
}
KEY_HELP = (
    "Matching keys as KEYWORD=VALUE (PS3.4 C.2.2.2: single value, *? wildcards,"
    " DATE1-DATE2 ranges, UID lists with backslashes), e.g. PatientID=123 StudyDate=2024-"
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _filters(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        keyword, sep, value = pair.partition("=")
        keyword = keyword.strip()
        if not sep or tag_for_keyword(keyword) is None:
            raise InvalidQuery(f"{pair[:40]!r}: expected KEYWORD=VALUE with a DICOM keyword")
        values[keyword] = value
    return values


def _identifier(level: Level, values: dict[str, str]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level.value
    for keyword in (*SHOWN[level], *values):
        vr = dictionary_VR(keyword)
        identifier.add_new(tag_for_keyword(keyword) or 0, vr, values.get(keyword) or None)
    return identifier


def _value(match: FederatedMatch, keyword: str) -> str:
    if match.local is not None and keyword in ATTRIBUTES:
        return str(attribute_value(match.local, keyword) or "")
    value: Any = match.remote.get(keyword) if match.remote is not None else None
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _document(result: FederatedResult, shown: tuple[str, ...]) -> dict[str, Any]:
    matches = [
        {
            "uid": m.key,
            "where": list(m.locations),
            "hub_has_copy": m.hub_has_copy,
            "availability": m.availability,
            **{keyword: _value(m, keyword) for keyword in shown},
        }
        for m in result.matches
    ]
    unavailable = [{"ae_title": u.ae_title, "reason": u.reason} for u in result.unavailable]
    return {"matches": matches, "sources": list(result.sources), "unavailable": unavailable}


@app.command("find")
def find(
    filters: Annotated[list[str] | None, typer.Argument(metavar="KEY=VALUE", help=KEY_HELP)] = None,
    level: Annotated[str, typer.Option(help="STUDY, SERIES or IMAGE")] = "STUDY",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document, for scripts")] = False,
    data_dir: DataDir = None,
) -> None:
    """Federated C-FIND: the hub's archive plus every PACS node, merged by UID.

    Each line says where the entity lives (AE titles, the hub's first when it has a
    copy) and whether the hub holds it (ONLINE) or must pull it first (NEARLINE).
    A PACS that does not answer within PACS_HUB_FEDERATED_TIMEOUT seconds is listed
    as unavailable; the others still answer. --json prints one document (matches,
    sources, unavailable) instead of the table. Exit status 0, 2 on a bad filter.
    """
    settings = load_settings(data_dir=data_dir)
    try:
        chosen = Level(level.strip().upper())
        if chosen is Level.PATIENT:
            raise ValueError(level)
    except ValueError:
        raise _fail(f"level {level!r}: expected STUDY, SERIES or IMAGE") from None
    try:
        values = _filters(filters or [])
        query = parse_query(values, regional_issuer=settings.regional_issuer)
        result = federated_find(
            settings, open_database(settings), chosen, query, _identifier(chosen, values)
        )
    except HubError as exc:
        raise _fail(exc.message) from exc
    if as_json:
        print(json.dumps(_document(result, SHOWN[chosen]), indent=1))
        return
    table = Table(chosen.value.title() + " UID", *SHOWN[chosen], "where", "availability")
    for match in result.matches:
        row = [match.key, *(_value(match, k) for k in SHOWN[chosen])]
        table.add_row(*row, ", ".join(match.locations), match.availability)
    console.print(table)
    console.print(
        f"{len(result.matches)} match(es); sources: {settings.ae_title} (hub), "
        + (", ".join(result.sources) or "no PACS node")
        + f"; {result.elapsed:.2f}s"
    )
    for source in result.unavailable:
        console.print(f"[yellow]unavailable:[/yellow] {source.ae_title} ({source.reason})")


@app.command("retrieve")
def retrieve(
    study: Annotated[str, typer.Argument(metavar="STUDY_UID", help="Study Instance UID")],
    node: Annotated[
        str | None, typer.Option(help="AE title of the PACS node to pull from (default: found)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Pull a study from an establishment PACS into the hub, with a progress bar.

    Without --node, the first PACS node holding the study (federated query) is used.
    The PACS sends the study to the running hub (C-MOVE to its AE title), through the
    normal ingest path. A retrieve of the same study already running (from the API, a
    C-MOVE or another command) is joined, not repeated. Exit status 0 when done, 1
    when the pull failed, 2 on bad input or when no PACS holds the study.
    """
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    try:
        source = node or remote_source(settings, database, study.strip())
        if source is None:
            raise _fail(f"no PACS node holds study {study.strip()[:64]}")
        with Progress(
            TextColumn(f"study from {source}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("pull", total=None)

            def show(received: int, expected: int | None) -> None:
                bar.update(task, completed=received, total=expected)

            job_id = pull_study(settings, database, source, study, progress=show)
    except HubError as exc:
        raise _fail(exc.message) from exc
    job = get_job(database, job_id)
    if job is None or job.state != "done":
        error = job.error if job else "job lost"
        raise _fail(f"retrieve job {job_id} failed: {error}", 1)
    console.print(f"retrieve job {job_id}: done, {job.received} instance(s) in the hub")


@app.command("jobs")
def jobs(
    study: Annotated[str | None, typer.Option(help="Only the jobs of this study")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many")] = 50,
    data_dir: DataDir = None,
) -> None:
    """List the latest retrieve jobs (on demand and prefetch), newest first."""
    database = open_database(load_settings(data_dir=data_dir))
    table = Table("id", "study", "node", "kind", "state", "received", "expected", "error")
    for job in list_jobs(database, study, limit):
        expected = "" if job.expected is None else str(job.expected)
        table.add_row(
            str(job.id),
            job.study_instance_uid,
            job.node,
            job.kind,
            job.state,
            str(job.received),
            expected,
            job.error,
        )
    console.print(table)
