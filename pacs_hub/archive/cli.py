"""``pacs-hub archive verify|status|reindex``: the archive's integrity from the command line.

``verify`` reads every stored instance back and checks it against the SHA-256
recorded when it was stored (:mod:`pacs_hub.archive.integrity`), beside a running hub;
``status`` shows the running hub's integrity sweep (:mod:`pacs_hub.archive.sweep`);
``reindex`` rebuilds the index from the blobs (:mod:`pacs_hub.archive.reindex`), the
hub stopped. Both show a progress bar on standard error, so ``--json`` output on
standard output stays clean.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from pacs_hub.archive import destruction, integrity, reindex, retention_cli, sweep, tier_cli
from pacs_hub.cli_common import AsJson, DataDir, console, echo_json, load_settings, print_table
from pacs_hub.storage import data_lock
from pacs_hub.storage.blobs import BlobStore
from pacs_hub.storage.database import Database

app = typer.Typer(
    help="The archive: check every stored instance, rebuild the index from the blobs;"
    " legal retention and destruction.",
    no_args_is_help=True,
)
app.add_typer(retention_cli.retention_app, name="retention")
app.add_typer(retention_cli.destruction_app, name="destruction")
app.add_typer(tier_cli.app, name="tier")
progress_console = Console(stderr=True)
DAMAGED_COLUMNS = ("found", "study_instance_uid", "sop_instance_uid", "blob", "problem")


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=progress_console,
    )


@app.command("verify")
def verify(
    study: Annotated[
        str | None, typer.Option("--study", help="Check this study only (Study Instance UID)")
    ] = None,
    jobs: Annotated[
        int, typer.Option(min=0, max=64, help="Blobs read at once; 0 = two per core, at most 8")
    ] = 0,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Read every stored instance back and check its size and SHA-256 against the index.

    Runs beside a running hub and changes nothing.
    Each damaged instance is named with its study, series and SOP Instance UIDs, its blob
    and what is wrong: missing, truncated, unreadable or checksum mismatch.

    Exit status: 0 when every instance is whole, 1 when one is damaged.
    """
    settings = load_settings(data_dir=data_dir)
    database = Database(settings.index_url)
    try:
        instances, size = integrity.extent(database, study)
        started = time.monotonic()
        with _bar() as progress:
            task = progress.add_task("checking", total=size)
            report = integrity.check_archive(
                database,
                BlobStore(settings.data_dir),
                study_instance_uid=study,
                jobs=jobs,
                on_checked=lambda item: progress.advance(task, item.size),
            )
        seconds = time.monotonic() - started
    finally:
        database.dispose()
    if as_json:
        echo_json(
            {
                "checked": report.checked,
                "bytes": report.bytes_checked,
                "whole": report.whole,
                "damaged": [
                    {
                        "study_instance_uid": d.instance.study_instance_uid,
                        "series_instance_uid": d.instance.series_instance_uid,
                        "sop_instance_uid": d.instance.sop_instance_uid,
                        "blob": d.instance.blob_key,
                        "problem": d.problem,
                    }
                    for d in report.damaged
                ],
            }
        )
    else:
        if report.damaged:
            print_table(
                ["Study Instance UID", "SOP Instance UID", "blob", "problem"],
                (
                    (
                        escape(d.instance.study_instance_uid),
                        escape(d.instance.sop_instance_uid),
                        escape(d.instance.blob_key),
                        escape(d.problem),
                    )
                    for d in report.damaged
                ),
            )
        scope = f"study {study}" if study else "the archive"
        console.print(
            f"checked {report.checked} instance(s) of {scope} ({report.bytes_checked / 1e6:.1f} MB)"
            f" in {seconds:.1f} s: {report.whole} whole, {len(report.damaged)} damaged",
            markup=False,
            highlight=False,
        )
        if study and instances == 0:
            console.print(f"no instance of study {study} is stored", markup=False)
    if report.damaged:
        raise typer.Exit(1)


@app.command("status")
def status(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """The integrity sweep of the running hub: the cycle in progress, the last one done,
    damaged instances found, when the next cycle starts.

    The sweep reads every stored instance back at most PACS_HUB_INTEGRITY_RATE MB/s,
    one cycle every PACS_HUB_INTEGRITY_CYCLE_DAYS days.

    Exit status: 0, or 1 when the current or last cycle found a damaged instance.
    """
    settings = load_settings(data_dir=data_dir)
    described = sweep.describe(settings)
    current, last = described["current"], described["last"]
    if as_json:
        echo_json(described)
    else:
        if not described["enabled"]:
            console.print("integrity sweep: off (PACS_HUB_INTEGRITY_RATE=0)")
        else:
            console.print(
                f"integrity sweep: up to {described['rate_mb_per_s']:g} MB/s,"
                f" a cycle every {described['cycle_days']:g} day(s);"
                f" {described['cycles_completed']} cycle(s) completed"
            )
        for name, cycle in (("current cycle", current), ("last cycle", last)):
            if cycle:
                ended = f", finished {cycle['finished']}" if "finished" in cycle else ""
                console.print(
                    f"{name}: started {cycle['started']}{ended}: {cycle['checked']} instance(s)"
                    f" ({cycle['bytes'] / 1e6:.1f} MB) checked, {cycle['damaged_count']} damaged",
                    markup=False,
                    highlight=False,
                )
        if described["next_cycle"]:
            console.print(f"next cycle: {described['next_cycle']}", markup=False)
        damaged = [*(current or {}).get("damaged", []), *(last or {}).get("damaged", [])]
        if damaged:
            print_table(
                ["found", "Study Instance UID", "SOP Instance UID", "blob", "problem"],
                (
                    tuple(
                        escape(str(d[k]))
                        for k in (
                            "found",
                            "study_instance_uid",
                            "sop_instance_uid",
                            "blob",
                            "problem",
                        )
                    )
                    for d in damaged
                ),
            )
    if (current or {}).get("damaged_count") or (last or {}).get("damaged_count"):
        raise typer.Exit(1)


@app.command("reindex")
def reindex_(
    jobs: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            help="Processes reading blobs as instances; 0 = one per core from 256 MB of blobs",
        ),
    ] = 0,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Rebuild the index from the blobs: index every stored instance it does not hold.

    For an index lost (its SQLite file) or restored from an older backup;
    on a whole index it changes nothing. The hub must be stopped.
    Each pack record and blob file is checked against its SHA-256 first.
    Not indexed, and named: damaged blobs, and blobs of an instance
    the index holds with other bytes. Instances destroyed at the end of their
    retention stay destroyed.
    What the blobs do not hold stays lost: the AE title each instance came from
    and the establishment a study was recorded under.

    Exit status: 0 when every whole blob is indexed,
    1 when a blob was damaged or not indexed, 2 when a hub runs on the data folder.
    """
    settings = load_settings(data_dir=data_dir)
    try:
        data_lock.claim(settings.data_dir, 0)
    except data_lock.DataDirInUse as exc:
        said = (
            f"a hub runs on data folder {exc.data_dir}{exc.holder}:"
            " stop it before rebuilding the index"
        )
        console.print(f"[red]error:[/red] {escape(said)}")
        raise typer.Exit(2) from exc
    except data_lock.DataDirUnusable as exc:
        console.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(2) from exc
    blobs = BlobStore(settings.data_dir)
    database = Database(settings.index_url)
    try:
        sources = reindex.blob_sources(blobs)
        with _bar() as progress:
            total = sum(path.stat().st_size for path in sources)
            task = progress.add_task("reading blobs", total=total)
            report = reindex.reindex(
                database,
                blobs,
                jobs=jobs,
                on_source=lambda path: progress.advance(task, path.stat().st_size),
                destroyed=destruction.destroyed_digests(settings.data_dir),
            )
    finally:
        database.dispose()
    skipped = [
        *(("damaged", s) for s in report.damaged),
        *(("other bytes indexed", s) for s in report.conflicts),
        *(("not an instance", s) for s in report.unreadable),
        *(("incomplete end", s) for s in report.incomplete_ends),
    ]
    if as_json:
        echo_json(
            {
                "blobs": report.blobs,
                "indexed": report.indexed,
                "already_indexed": report.already,
                "destroyed": report.destroyed + report.erased,
                "skipped": [
                    {
                        "kind": kind,
                        "where": s.where,
                        "reason": s.reason,
                        "sop_instance_uid": s.sop_instance_uid,
                    }
                    for kind, s in skipped
                ],
            }
        )
    else:
        if skipped:
            print_table(
                ["not indexed", "where", "why", "SOP Instance UID"],
                (
                    (kind, escape(s.where), escape(s.reason), escape(s.sop_instance_uid or "-"))
                    for kind, s in skipped
                ),
            )
        gone = report.destroyed + report.erased
        console.print(
            f"{report.blobs} blob(s) read: {report.indexed} instance(s) indexed,"
            f" {report.already} already indexed, {report.problems} not indexed"
            f"{f', {gone} destroyed at the end of their retention' if gone else ''}"
            f" ({len(report.damaged)} damaged, {len(report.conflicts)} other bytes indexed,"
            f" {len(report.unreadable)} not an instance)",
            markup=False,
            highlight=False,
        )
    if report.problems:
        raise typer.Exit(1)
