"""Backup for hospitals: backfill and restore rates vs the plain paths, and the RTO of 1 TB.

Same run, same corpus (the ct512 CT studies), each path into an empty peer:

* plain backfill: Orthanc C-MOVE of each study to a dcmtk storescp writing files;
* hub backfill: ``run_backfill`` (C-FIND windows, then C-MOVE of each study to the hub,
  ``backup_associations`` at once, state file per study), the hub serving;
* plain restore: dcmtk storescu from the corpus files into an empty Orthanc
  (``RESTORE_PARALLEL`` associations, as many as the hub's restore uses);
* hub restore: ``pacs_hub.backup.restore.restore`` into an empty Orthanc; the send
  phase is timed (first study started to last study acknowledged), and the whole
  (with C-FIND verification and the byte-identical sample) separately.

RTO for 1 TB is 1e12 bytes divided by the hub restore's send rate (MB/s). It reports;
it asserts nothing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import data
from bench.move import MOVE_AE, movescu
from bench.procs import LOOPBACK, StoreScp, free_port, run_parallel, storescu, sync
from bench.targets import Destination, HubTarget, OrthancTarget

MB = 1_000_000
RESTORE_PARALLEL = 4
CODE = "BENCH_H"


@dataclass(frozen=True, slots=True)
class Rate:
    """One timed path."""

    name: str
    instances: int
    seconds: float
    bytes_: float
    note: str = ""

    @property
    def inst_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_s(self) -> float:
        return self.bytes_ / MB / self.seconds if self.seconds else 0.0


@contextmanager
def hub_environment(hub: HubTarget) -> Iterator[None]:
    """The hub's settings in this process (for the in-process backfill and restore)."""
    saved = dict(os.environ)
    os.environ.update(hub.env())
    os.environ.update(PACS_HUB_BACKUP_INTERVAL="0", PACS_HUB_BACKUP_SINCE="19900101")
    os.environ["PACS_HUB_BACKUP_WINDOW_DAYS"] = "3650"  # a handful of C-FINDs
    os.environ["PACS_HUB_BACKUP_RESTORE_ASSOCIATIONS"] = str(RESTORE_PARALLEL)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def plain_backfill(
    source: OrthancTarget, port: int, studies: list[str], work: Path, corpus: data.Corpus
) -> Rate:
    scp = StoreScp(work / "plain-backfill", MOVE_AE, port=port)
    try:
        start = time.perf_counter()
        errors = [e for e in (movescu(source, uid)[1] for uid in studies) if e]
        seconds = time.perf_counter() - start
        received = scp.count()
    finally:
        scp.stop()
        shutil.rmtree(work / "plain-backfill", ignore_errors=True)
    return Rate(
        "Orthanc C-MOVE -> dcmtk storescp",
        received,
        seconds,
        received * corpus.mean_bytes,
        "; ".join(errors)[:200],
    )


def hub_backfill(hub: HubTarget, source: OrthancTarget, corpus: data.Corpus) -> Rate:
    from pacs_hub.backup import backfill, inventory
    from pacs_hub.cli_common import load_settings, open_database

    hub.cli("establishments", "add", CODE, "Bench hospital")
    hub.cli(
        "nodes", "add", source.ae_title, LOOPBACK, str(source.dicom_port), "--establishment", CODE
    )
    with hub_environment(hub):
        settings = load_settings()
        database = open_database(settings)
        inventory.enrol(settings, database, CODE)
        backfill.request(settings, CODE)
        start = time.perf_counter()
        progress = backfill.run_backfill(settings, database, CODE)
        seconds = time.perf_counter() - start
    done = progress.instances_done if progress else 0
    note = "" if progress and progress.state == "done" else f"state {progress and progress.state}"
    return Rate(
        "hub backfill (C-FIND + C-MOVE to the hub)",
        done,
        seconds,
        progress.bytes_done if progress else 0,
        note,
    )


def plain_restore(work: Path, corpus: data.Corpus) -> Rate:
    target = OrthancTarget(work / "plain-restore", ae_title="PLAIN_R").start([])
    try:
        sync()
        timed = run_parallel(
            [
                storescu(target.ae_title, target.dicom_port, part)
                for part in corpus.split(RESTORE_PARALLEL)
            ]
        )
        stored = target.count()
    finally:
        target.stop()
        shutil.rmtree(work / "plain-restore", ignore_errors=True)
    return Rate(
        f"dcmtk storescu x{RESTORE_PARALLEL} -> Orthanc",
        stored,
        timed.seconds,
        stored * corpus.mean_bytes,
        "" if timed.ok else timed.detail[:200],
    )


def hub_restore(hub: HubTarget, work: Path) -> tuple[Rate, float, str]:
    from pacs_hub.backup import restore
    from pacs_hub.cli_common import load_settings, open_database

    target = OrthancTarget(work / "hub-restore", ae_title="HUB_R").start([])
    hub.cli("nodes", "add", target.ae_title, LOOPBACK, str(target.dicom_port))
    last = [0.0]

    def seen(_progress: restore.RestoreProgress) -> None:
        last[0] = time.perf_counter()

    try:
        with hub_environment(hub):
            settings = load_settings()
            start = time.perf_counter()
            report = restore.restore(
                settings, open_database(settings), CODE, target.ae_title, fresh=True, report=seen
            )
            whole = time.perf_counter() - start
    finally:
        target.stop()
        shutil.rmtree(work / "hub-restore", ignore_errors=True)
    send = (last[0] - start) if last[0] else whole
    size = float(report["bytes"])
    return (
        Rate("hub restore (send phase)", int(report["restored"]), send, size),
        whole,
        report["verdict"],
    )


def run_backup(
    out: Path, corpus: data.Corpus, hub_processes: int, log: Callable[[str], None]
) -> list[str]:
    """The whole section; markdown lines for the results file. The hub runs with the
    gateway processes of the other sections (``--hub-processes``; 0: its default)."""
    work = out / "work" / "backup"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    studies = [data.study_uid(corpus.name, n) for n in range(2)]
    hub = HubTarget(work / "hub", processes=hub_processes)
    move_dest = Destination(MOVE_AE, free_port())
    source = OrthancTarget(work / "source", ae_title="SOURCE_PACS")
    source.start([Destination(hub.ae_title, hub.dicom_port), move_dest])
    hub.start([])
    rows: list[Rate] = []
    try:
        log(f"backup: loading {corpus.count} instances into the source Orthanc")
        run_parallel([storescu(source.ae_title, source.dicom_port, p) for p in corpus.split(2)])
        rows.append(plain_backfill(source, move_dest.port, studies, work, corpus))
        log(f"backup: {rows[-1].name}: {rows[-1].inst_s:.0f} inst/s")
        rows.append(hub_backfill(hub, source, corpus))
        log(f"backup: {rows[-1].name}: {rows[-1].inst_s:.0f} inst/s")
        rows.append(plain_restore(work, corpus))
        log(f"backup: {rows[-1].name}: {rows[-1].inst_s:.0f} inst/s")
        restored, whole, verdict = hub_restore(hub, work)
        rows.append(restored)
        log(f"backup: {restored.name}: {restored.inst_s:.0f} inst/s; {verdict}")
    finally:
        hub.stop()
        source.stop()
        shutil.rmtree(work, ignore_errors=True)
    return render(rows, whole, verdict)


def render(rows: list[Rate], whole: float, verdict: str) -> list[str]:
    lines = [
        "",
        "## Backup for hospitals (backfill, restore, RTO)",
        "",
        "| path | instances | s | inst/s | MB/s | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.instances} | {r.seconds:.2f} | {r.inst_s:.0f} | "
            f"{r.mb_s:.1f} | {r.note} |"
        )
    backfill = rows[1].inst_s / rows[0].inst_s if rows[0].inst_s else 0.0
    restore = rows[3].inst_s / rows[2].inst_s if rows[2].inst_s else 0.0
    rto = 1e12 / (rows[3].mb_s * MB) / 3600 if rows[3].mb_s else float("inf")
    lines += [
        "",
        f"Hub backfill at {backfill:.0%} of the plain path, restore at {restore:.0%} "
        "(target: >= 80% each). The backfill stores every instance through the hub's ingest"
        " (a data sync of its pack file and an index commit per instance, see the ingest"
        " table), which storescp does not; with --quick, the inventory C-FINDs and per-study"
        " bookkeeping dominate."
        " The restore shares each study's instances over its associations and writes each"
        " C-STORE request directly (gateway/egress.py send_loaded; pynetdicom's requestor"
        " still hands each response over between threads) in one Python process, on the"
        " same 2 cores as the Orthanc receiving them.",
        f"Whole restore with verification: {whole:.1f} s; verdict: {verdict}.",
        f"RTO for 1 TB at the measured restore rate: {rto:.1f} h.",
    ]
    return lines
