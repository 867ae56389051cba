"""The archive's integrity, side by side: check every stored instance, rebuild the index.

One hub and one Orthanc (Debian, default SQLite index, ``StoreMD5ForAttachments`` on
as by default), each sent the same corpora (the ct512 CT study and the ct64 studies)
by dcmtk storescu, untimed. Then, with what each offers:

* **check every instance**: the hub's ``check_archive`` (what ``pacs-hub archive
  verify`` runs: each blob read back and hashed against its recorded SHA-256, beside
  the running hub) vs Orthanc's ``POST /instances/{id}/attachments/dicom/verify-md5``
  for every instance, :data:`PARALLEL` requests at once (Orthanc has no archive-wide
  check);
* **rebuild the index from the stored files**: the hub's ``reindex`` into an empty
  index (what ``pacs-hub archive reindex`` runs, the hub stopped and its index file
  deleted) vs Orthanc's ``POST /studies/{id}/reconstruct`` for every study, one at a
  time (it re-reads every instance's file into Orthanc's index, which is kept; Orthanc
  1.10 has no rebuild from the storage folder).

Both read from the page cache (the files were just written). It reports; it asserts
nothing.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import data
from bench.backup import MB, Rate
from bench.procs import run_parallel, storescu, sync, wait_for
from bench.targets import HubTarget, OrthancTarget

PARALLEL = 4


def _post(url: str) -> object:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=600) as answer:
        body = answer.read()
    return json.loads(body) if body else {}


def _get(url: str) -> list[str]:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return list(json.loads(answer.read()))


def hub_verify(hub: HubTarget, size: float) -> Rate:
    from pacs_hub.archive.integrity import check_archive
    from pacs_hub.storage.blobs import BlobStore
    from pacs_hub.storage.database import Database

    database = Database(f"sqlite:///{hub.data_dir / 'index.sqlite3'}", run_migrations=False)
    try:
        start = time.perf_counter()
        report = check_archive(database, BlobStore(hub.data_dir))
        seconds = time.perf_counter() - start
    finally:
        database.dispose()
    note = f"{len(report.damaged)} damaged" if report.damaged else ""
    return Rate("hub", report.checked, seconds, size, note)


def orthanc_verify(orthanc: OrthancTarget, size: float) -> Rate:
    base = orthanc.peer.url
    ids = _get(f"{base}/instances")
    failed: list[str] = []

    def verify(uid: str) -> None:
        try:
            _post(f"{base}/instances/{uid}/attachments/dicom/verify-md5")
        except Exception as exc:  # an HTTP error is a failed check
            failed.append(f"{uid}: {exc}")

    start = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(verify, ids))
    seconds = time.perf_counter() - start
    return Rate("orthanc", len(ids), seconds, size, f"{len(failed)} failed" if failed else "")


def hub_reindex(hub: HubTarget, size: float) -> Rate:
    from pacs_hub.archive.reindex import reindex
    from pacs_hub.storage.blobs import BlobStore
    from pacs_hub.storage.database import Database

    processes = hub.server_pids()
    hub.stop()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in processes), 30, "hub exit")
    for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
        (hub.data_dir / name).unlink(missing_ok=True)
    database = Database(f"sqlite:///{hub.data_dir / 'index.sqlite3'}")  # migrated: untimed
    try:
        start = time.perf_counter()
        report = reindex(database, BlobStore(hub.data_dir), jobs=0)  # as the command
        seconds = time.perf_counter() - start
    finally:
        database.dispose()
    note = f"{report.problems} not indexed" if report.problems else ""
    return Rate("hub", report.indexed, seconds, size, note)


def orthanc_reconstruct(orthanc: OrthancTarget, instances: int, size: float) -> Rate:
    base = orthanc.peer.url
    studies = _get(f"{base}/studies")
    start = time.perf_counter()
    note = ""
    try:
        for study in studies:
            _post(f"{base}/studies/{study}/reconstruct")
    except Exception as exc:
        note = f"failed: {exc}"
    seconds = time.perf_counter() - start
    return Rate("orthanc", instances, seconds, size, note)


def run_archive(
    out: Path, corpora: list[data.Corpus], hub_processes: int, log: Callable[[str], None]
) -> list[str]:
    """The section's markdown lines."""
    work = out / "work" / "archive"
    shutil.rmtree(work, ignore_errors=True)
    hub = HubTarget(work / "hub", processes=hub_processes)
    orthanc = OrthancTarget(work / "orthanc")
    instances = sum(c.count for c in corpora)
    size = float(sum(c.total_bytes for c in corpora))
    rows: list[tuple[str, Rate, Rate]] = []
    try:
        orthanc.start([])
        hub.start([])
        for target in (hub, orthanc):
            log(f"archive: loading {instances} instances into {target.name}")
            for corpus in corpora:
                run_parallel(
                    [storescu(target.ae_title, target.dicom_port, p) for p in corpus.split(2)]
                )
        sync()
        log(f"archive: hub {hub.count()} instances, Orthanc {orthanc.count()}")
        rows.append(("check every instance", hub_verify(hub, size), orthanc_verify(orthanc, size)))
        _said(log, rows[-1])
        rebuilt = hub_reindex(hub, size)
        rows.append(("rebuild the index", rebuilt, orthanc_reconstruct(orthanc, instances, size)))
        _said(log, rows[-1])
    except Exception as exc:  # this section lost, not the whole run's results
        log(f"archive: failed: {exc!r}")
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    else:
        error = ""
    finally:
        hub.stop()
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    lines = render(rows, instances, size)
    return lines + (["", f"Section failed: {error}"] if error else [])


def _said(log: Callable[[str], None], row: tuple[str, Rate, Rate]) -> None:
    name, hub, orthanc = row
    log(f"archive: {name}: hub {hub.seconds:.2f} s, Orthanc {orthanc.seconds:.2f} s")


def render(rows: list[tuple[str, Rate, Rate]], instances: int, size: float) -> list[str]:
    lines = [
        "",
        "## Archive integrity (check every instance, rebuild the index)",
        "",
        f"{instances} instances ({size / MB:.0f} MB: the ct512 study and the ct64 studies),"
        " in a hub and an Orthanc; from the page cache. Hub: `check_archive` (SHA-256 of"
        " every blob, beside the running hub) and `reindex` into an empty index (the hub"
        f" stopped). Orthanc: `verify-md5` of every instance's attachment ({PARALLEL} requests"
        " at once) and `reconstruct` of every study, one at a time (its index kept).",
        "",
        "| operation | hub s | hub inst/s | hub MB/s | Orthanc s | Orthanc inst/s | Orthanc MB/s"
        " | **hub/Orthanc (rate)** | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, hub, orthanc in rows:
        ratio = hub.inst_s / orthanc.inst_s if orthanc.inst_s else 0.0
        note = "; ".join(
            n
            for n in (
                f"hub: {hub.note}" if hub.note else "",
                f"Orthanc: {orthanc.note}" if orthanc.note else "",
            )
            if n
        )
        lines.append(
            f"| {name} | {hub.seconds:.2f} | {hub.inst_s:,.0f} | {hub.mb_s:,.0f} |"
            f" {orthanc.seconds:.2f} | {orthanc.inst_s:,.0f} | {orthanc.mb_s:,.0f} |"
            f" **{ratio:.2f}** | {note} |"
        )
    return lines
