"""Federation: a federated C-FIND over three Orthanc PACS and the hub, and retrieve on demand.

Three Debian Orthanc play the PACS of establishments A, B and C (AE titles
``ORTH_A``..``ORTH_C``), each holding its own ``fed1``..``fed3`` corpus (the same
patients by name under each one's own Patient IDs, distinct studies). A fresh hub
registers them with ``pacs-hub nodes add AE HOST PORT --role pacs`` and the dcmtk
storescp with ``--role destination``, and holds a copy of A's first fifth of studies
(so the merge de-duplicates). Each Orthanc knows the hub and the storescp as
modalities. B also holds study 1 of ``ct512``, which the hub does not.

* **Federated C-FIND** (:mod:`bench.fed_find`): each query goes to the hub's federated
  AE title and, one after another, to each PACS directly and to the hub's own AE title.
* **Retrieve on demand**: study 1 of ``ct512`` is C-MOVEd by dcmtk movescu to the
  storescp (``+B``), once directly from B and once through the hub (which locates it by
  a federated C-FIND, pulls it from B by C-MOVE into its archive and sends each instance
  as soon as it is stored), per
  repetition; a fresh hub for each repetition, so that it never holds the study before.
  Then the two halves alone on the last hub: storing ct512 study 2 (as large) from one
  storescu association, and C-MOVEing study 1 again now that the hub holds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sqlite3
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench import data, move
from bench.fed_find import FedLatency, build_queries, run_queries
from bench.ingest import send, settle_count
from bench.move import MoveRun, MoveSummary
from bench.procs import LOOPBACK, free_port, run_parallel, storescu, sync
from bench.stow import study_files
from bench.targets import HUB_AE, Destination, HubTarget, OrthancTarget, keep_logs

PACS = ("ORTH_A", "ORTH_B", "ORTH_C")
CORPORA = dict(zip(PACS, ("fed1", "fed2", "fed3"), strict=True))
HOLDER = "ORTH_B"
HUB_COPY_FRACTION = 5  # the hub holds a copy of A's first 1/5 of studies
Log = Callable[[str], None]


@dataclass
class RetrieveResults:
    """Retrieve on demand vs a direct C-MOVE, per repetition and summarised."""

    instances: int
    mean_bytes: float
    runs: list[MoveRun] = field(default_factory=list)
    pull_seconds: list[float] = field(default_factory=list)
    """Per hub run: the hub's retrieve job, started to finished (its C-MOVE from B)."""
    ingest_seconds: float | None = None
    """The last hub storing ct512 study 2 (as large) sent by one storescu association."""
    send_seconds: float | None = None
    """The last hub C-MOVEing study 1 again, held now, to the storescp."""

    def summary(self, route: str) -> MoveSummary | None:
        return move.summarize(self.runs, route, self.mean_bytes)

    @property
    def pull_median(self) -> float | None:
        return statistics.median(self.pull_seconds) if self.pull_seconds else None


@dataclass
class FedResults:
    """Everything the federation section measured."""

    studies_per_pacs: int
    instances: dict[str, int] = field(default_factory=dict)
    """Instances each source holds (each PACS, and the hub's copies)."""
    find: dict[str, FedLatency] = field(default_factory=dict)
    retrieve: RetrieveResults | None = None
    errors: list[str] = field(default_factory=list)


class Region:
    """Three Orthanc PACS, the storescp destination, and a hub on a fixed DICOM port."""

    def __init__(self, work: Path, hub_processes: int, log: Log) -> None:
        self.work = work
        self.hub_processes = hub_processes
        self.log = log
        self.hub_port = free_port()
        self.dest = move.destination()
        self.pacs: dict[str, OrthancTarget] = {}
        self.hub: HubTarget | None = None
        self.hubs = 0

    def start_pacs(self) -> None:
        known = [Destination(HUB_AE, self.hub_port), self.dest]
        for ae in PACS:
            self.pacs[ae] = OrthancTarget(self.work / ae, name=ae, ae_title=ae).start(known)

    def start_hub(self) -> HubTarget:
        """A fresh hub (empty archive, a new folder) knowing the three PACS and the
        destination."""
        self.stop_hub()
        self.hubs += 1
        workdir = self.work / f"hub-{self.hubs}"
        workdir.mkdir(parents=True)
        hub = HubTarget(workdir, processes=self.hub_processes, dicom_port=self.hub_port)
        for ae, pacs in self.pacs.items():
            hub.cli("nodes", "add", ae, LOOPBACK, str(pacs.dicom_port), "--role", "pacs")
        dest = self.dest
        hub.cli("nodes", "add", dest.ae_title, LOOPBACK, str(dest.port), "--role", "destination")
        self.hub = hub.start([])
        return hub

    def stop_hub(self) -> None:
        if self.hub is not None:
            self.hub.stop()
            self.hub = None

    def stop(self) -> None:
        self.stop_hub()
        for pacs in self.pacs.values():
            pacs.stop()


def hub_copy_files(corpus: data.Corpus, studies: int) -> list[Path]:
    """The files of the first ``studies`` studies of a ct64-laid-out corpus (10 each)."""
    return [corpus.root / f"part{i % data.PARTS}" / f"{i:07d}.dcm" for i in range(studies * 10)]


def send_files(ae_title: str, port: int, files: list[Path]) -> None:
    """Send ``files`` over two associations (untimed); raise when a storescu fails."""
    done = run_parallel([storescu(ae_title, port, files[k::2]) for k in range(2)])
    if not done.ok:
        raise RuntimeError(f"storescu to {ae_title}: {done.detail[:300]}")


def load_region(
    region: Region, corpora: dict[str, data.Corpus], ct512: data.Corpus, fed: FedResults
) -> None:
    """Fill the PACS (and the hub's copies); record what each holds."""
    for ae, corpus in corpora.items():
        pacs = region.pacs[ae]
        done = send(pacs, corpus, 2)
        if not done.ok:
            raise RuntimeError(f"storescu to {ae}: {done.detail[:300]}")
        fed.instances[ae] = settle_count(pacs, corpus.count)
    holder = region.pacs[HOLDER]
    send_files(holder.ae_title, holder.dicom_port, study_files(ct512, ct512.count // 2))
    settle_count(holder, fed.instances[HOLDER] + ct512.count // 2)
    hub = region.start_hub()
    copies = hub_copy_files(corpora[PACS[0]], fed.studies_per_pacs // HUB_COPY_FRACTION)
    send_files(hub.ae_title, hub.dicom_port, copies)
    fed.instances["hub"] = settle_count(hub, len(copies))


def pull_seconds(hub: HubTarget, study: str) -> float | None:
    """Started to finished of the hub's last retrieve job for ``study`` (None: no job)."""
    uri = f"file:{hub.data_dir / 'index.sqlite3'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        row = db.execute(
            "SELECT started_at, finished_at, state FROM retrieve_jobs"
            " WHERE study_instance_uid = ? ORDER BY id DESC LIMIT 1",
            (study,),
        ).fetchone()
    if row is None or row[0] is None or row[1] is None or row[2] != "done":
        return None
    started, finished = (datetime.fromisoformat(str(v)) for v in row[:2])
    return (finished - started).total_seconds()


def retrieve_once(region: Region, res: RetrieveResults, rep: int, log: Log) -> None:
    """A direct C-MOVE from B, then one through a hub that does not hold the study."""
    uid = data.study_uid("ct512", 0)
    workdir = region.work / "scp"
    direct = move.move_once(region.pacs[HOLDER], region.dest, uid, res.instances, workdir, "files")
    res.runs.append(dataclasses.replace(direct, mode="direct"))
    hub = region.hub if rep == 0 and region.hub is not None else region.start_hub()
    through = move.move_once(hub, region.dest, uid, res.instances, workdir, "files")
    pulled = pull_seconds(hub, uid)
    error = through.error or ("" if pulled is not None else "no finished retrieve job")
    res.runs.append(dataclasses.replace(through, mode="hub", error=error))
    if pulled is not None:
        res.pull_seconds.append(pulled)
    for run in res.runs[-2:]:
        log(
            f"federation retrieve rep {rep + 1} {run.mode}: "
            f"{run.received / run.seconds:.0f} inst/s, {run.received}/{run.expected}"
            f"{'' if run.ok else ' FAILED ' + run.error}"
            + (f" (pull {pulled:.1f} s)" if run.mode == "hub" and pulled else "")
        )


def hub_baselines(region: Region, res: RetrieveResults, ct512: data.Corpus, log: Log) -> None:
    """The two halves of a retrieve through the hub, timed alone on the last hub: plain
    ingest of a study as large (ct512 study 2, one storescu association) and sending
    the pulled study again, held now, by C-MOVE."""
    hub = region.hub
    assert hub is not None
    count = res.instances
    files = [ct512.root / f"part{i % data.PARTS}" / f"{i:07d}.dcm" for i in range(count, 2 * count)]
    before = hub.count()
    sync()
    timed = run_parallel([storescu(hub.ae_title, hub.dicom_port, files)])
    if timed.ok and settle_count(hub, before + count) == before + count:
        res.ingest_seconds = timed.seconds
    uid = data.study_uid("ct512", 0)
    again = move.move_once(hub, region.dest, uid, count, region.work / "scp", "files")
    if again.ok:
        res.send_seconds = again.seconds
    log(
        f"federation: hub alone, ingest {count / timed.seconds:.0f} inst/s"
        f"{'' if res.ingest_seconds else ' FAILED'}, C-MOVE of the held study "
        f"{again.received / again.seconds:.0f} inst/s{'' if again.ok else ' FAILED'}"
    )


def measure(args: argparse.Namespace, region: Region, fed: FedResults, log: Log) -> None:
    corpora = {ae: data.corpus(args.out, kind, args.fed_studies) for ae, kind in CORPORA.items()}
    ct512 = data.corpus(args.out, "ct512", args.ct512_slices)
    region.start_pacs()
    log(f"federation: loading 3 PACS ({args.fed_studies} studies each) and the hub's copies")
    load_region(region, corpora, ct512, fed)
    log("federation: " + ", ".join(f"{k} {v:,} instances" for k, v in fed.instances.items()))
    assert region.hub is not None
    queries = build_queries(args.fed_studies, args.queries)
    fed.find = run_queries(region.hub, region.pacs, queries)
    for kind, lat in fed.find.items():
        log(
            f"federated C-FIND {kind}: p50 {lat.federated.p50_ms:.0f} ms, slowest PACS "
            f"{lat.slowest.p50_ms:.0f} ms, one by one {lat.one_by_one.p50_ms:.0f} ms"
        )
    fed.retrieve = RetrieveResults(ct512.count // 2, ct512.mean_bytes)
    for rep in range(args.move_reps):
        retrieve_once(region, fed.retrieve, rep, log)
    hub_baselines(region, fed.retrieve, ct512, log)


def run_federation(args: argparse.Namespace, log: Log) -> FedResults:
    """The federation section; an error ends it (recorded, logs kept), not the run."""
    fed = FedResults(args.fed_studies)
    work = args.out / "work" / "federation"
    shutil.rmtree(work, ignore_errors=True)
    region = Region(work, args.hub_processes, log)
    try:
        measure(args, region, fed, log)
    except Exception as exc:  # a broken region costs this section, not the whole run
        kept = args.out / "logs" / "federation"
        for name in (*PACS, *(f"hub-{n}" for n in range(1, region.hubs + 1))):
            keep_logs(work / name, kept, name)
        log(f"federation failed: {exc!r}; logs in {kept}")
        fed.errors.append(f"{type(exc).__name__}: {str(exc)[:200]} (logs: {kept})")
    finally:
        region.stop()
        shutil.rmtree(work, ignore_errors=True)
    return fed
