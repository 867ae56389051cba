"""``pacs-hub archive tier``: the storage tiers from the command line.

``status`` counts each tier, ``move`` sends studies to the cold tier (losslessly
compressed, :mod:`pacs_hub.storage.cold`), ``recall`` brings them back, ``free`` erases
the copies no instance names any more (:mod:`pacs_hub.archive.tiers`). Runs beside a
running hub.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pacs_hub.archive import tiers
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
from pacs_hub.storage.database import Database

app = typer.Typer(
    help="Storage tiers: hot (as received) and cold (losslessly compressed, read through"
    " a cache); move studies between them.",
    no_args_is_help=True,
)
Studies = Annotated[
    list[str] | None, typer.Option("--study", help="A Study Instance UID (repeatable)")
]


@app.command("status")
def status(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Instances and bytes in each tier, the cold tier's size on disk, its cache."""
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    found = tiers.describe(database, BlobStore(settings.data_dir), settings.cold_cache_mb << 20)
    if as_json:
        echo_json(found)
        return
    rows = []
    for name, tier in found["tiers"].items():
        disk = tier.get("disk_bytes")
        rows.append(
            (
                name,
                f"{tier['instances']:,}",
                f"{tier['bytes'] / 1e6:,.1f}",
                "" if disk is None else f"{disk / 1e6:,.1f}",
            )
        )
    print_table(("tier", "instances", "MB as received", "MB on disk (cold)"), rows)
    ratio = found["cold_ratio"]
    cache = found["cache"]
    console.print(
        f"cold compression ratio: {ratio if ratio else '-'}; cache {cache['files']} file(s),"
        f" {cache['bytes'] / 1e6:.1f} of {cache['max_bytes'] / 1e6:.0f} MB;"
        f" {found['garbage_waiting']} replaced blob(s) waiting to be erased"
    )


def _run(
    database: Database,
    store: BlobStore,
    uids: list[str],
    to_cold: bool,
    as_json: bool,
) -> list[tiers.Moved]:
    results: list[tiers.Moved] = []
    verb = "to the cold tier" if to_cold else "to the hot tier"
    with Progress(
        TextColumn(f"moving {verb}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=as_json or not uids,
    ) as bar:
        task = bar.add_task("studies", total=len(uids))
        for uid in uids:
            results.append(tiers.move_study(database, store, uid, to_cold=to_cold))
            bar.advance(task)
    return results


def _report(results: list[tiers.Moved], as_json: bool) -> None:
    if as_json:
        echo_json([moved.as_dict() for moved in results])
        return
    count = sum(moved.instances for moved in results)
    size = sum(moved.bytes for moved in results)
    stored = sum(moved.stored_bytes for moved in results)
    console.print(
        f"{sum(bool(m.instances) for m in results)} stud(ies), {count} instance(s),"
        f" {size / 1e6:.1f} MB moved ({stored / 1e6:.1f} MB stored)"
    )
    for moved in results:
        for sop in moved.damaged:
            console.print(
                f"[red]damaged:[/red] instance {sop} of {moved.study_instance_uid} left"
                " where it is (pacs-hub archive check)"
            )
    console.print(
        f"replaced copies are erased after {tiers.GRACE_SECONDS / 60:.0f} minutes by the"
        " hub's tiering task, or by 'pacs-hub archive tier free'"
    )


@app.command("move")
def move(
    study: Studies = None,
    older_than: Annotated[
        int | None,
        typer.Option(
            "--older-than",
            min=0,
            help="Every study that received no instance for this many days",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many studies")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the studies, move nothing")
    ] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Move studies to the cold tier: each instance compressed losslessly (Zstandard),
    checked against its SHA-256 first; read back byte for byte by every door."""
    if not study and older_than is None:
        console.print("[red]error:[/red] give --study UID or --older-than DAYS")
        raise typer.Exit(2)
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    store = BlobStore(settings.data_dir)
    uids = list(dict.fromkeys(study or []))
    if older_than is not None:
        with database.read_connection() as conn:
            uids += tiers.candidates(conn, tiers.now() - timedelta(days=older_than), limit)
    uids = uids[:limit] if limit else uids
    if dry_run:
        if as_json:
            echo_json(uids)
        else:
            for uid in uids:
                console.print(uid)
            console.print(f"{len(uids)} stud(ies) would move")
        return
    with refusals(), tiers.alone(settings.data_dir):
        results = _run(database, store, uids, True, as_json)
    _report(results, as_json)


@app.command("recall")
def recall(
    study: Annotated[list[str], typer.Option("--study", help="A Study Instance UID (repeatable)")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Bring studies back to the hot tier (a patient in follow-up, a teaching file)."""
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    store = BlobStore(settings.data_dir)
    with refusals(), tiers.alone(settings.data_dir):
        results = _run(database, store, list(dict.fromkeys(study)), False, as_json)
    _report(results, as_json)


@app.command("free")
def free(
    grace: Annotated[
        float,
        typer.Option("--grace", min=0, help="Seconds a replaced copy is kept for its readers"),
    ] = tiers.GRACE_SECONDS,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Erase the copies that moves replaced, once no instance names them (the hub's
    tiering task does it every 10 minutes)."""
    settings = load_settings(data_dir=data_dir)
    database = open_database(settings)
    with refusals(), tiers.alone(settings.data_dir):
        freed = tiers.free_garbage(database, BlobStore(settings.data_dir), grace)
    if as_json:
        echo_json({"erased": freed.erased, "kept": freed.kept, "waiting": freed.waiting})
        return
    console.print(
        f"{freed.erased} copy(ies) erased, {freed.kept} named again kept,"
        f" {freed.waiting} waiting for the grace period"
    )
