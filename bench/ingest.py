"""C-STORE ingest: P parallel dcmtk storescu processes into a freshly started target."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.data import Corpus
from bench.procs import Timed, cpu_seconds, run_parallel, storescu, sync
from bench.targets import Target, start_target

MB = 1_000_000


@dataclass(frozen=True, slots=True)
class IngestRun:
    """One timed ingest of a whole corpus."""

    dataset: str
    target: str
    processes: int
    seconds: float
    expected: int
    stored: int
    server_cpu_s: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.stored == self.expected


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and range of the successful runs of one (dataset, target, P) cell."""

    runs: int
    failed: int
    inst_s: float
    inst_min: float
    inst_max: float
    mb_s: float
    cpu_ms_per_inst: float


def send(target: Target, corpus: Corpus, processes: int) -> Timed:
    """Send the corpus split over ``processes`` associations; the timed window."""
    commands = [
        storescu(target.ae_title, target.dicom_port, parts) for parts in corpus.split(processes)
    ]
    return run_parallel(commands)


def settle_count(target: Target, expected: int, timeout: float = 10.0) -> int:
    """The target's instance count, waiting briefly for asynchronous indexing."""
    deadline = time.monotonic() + timeout
    stored = target.count()
    while stored < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        stored = target.count()
    return stored


def ingest_once(
    kind: str, corpus: Corpus, processes: int, workdir: Path, hub_processes: int
) -> IngestRun:
    """Start ``kind`` fresh, send the corpus, verify, stop, delete its storage."""
    target = start_target(kind, workdir, hub_processes, [])
    try:
        sync()
        before = cpu_seconds(target.server_pids())
        timed = send(target, corpus, processes)
        cpu = cpu_seconds(target.server_pids()) - before
        stored = settle_count(target, corpus.count)
    finally:
        target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return IngestRun(
        corpus.name, kind, processes, timed.seconds, corpus.count, stored, cpu, timed.detail
    )


def run_matrix(
    corpora: Sequence[Corpus],
    targets: Sequence[str],
    processes: Sequence[int],
    reps: int,
    workdir: Path,
    hub_processes: int,
    log: Callable[[str], None],
) -> list[IngestRun]:
    """Every cell ``reps`` times, interleaved (rep, dataset, target, P) to spread drift."""
    runs = []
    for rep in range(reps):
        for corpus in corpora:
            for kind in targets:
                for p in processes:
                    run = ingest_once(kind, corpus, p, workdir / kind, hub_processes)
                    runs.append(run)
                    log(
                        f"ingest rep {rep + 1}/{reps} {corpus.name} {kind} P={p}: "
                        f"{run.expected / run.seconds:.0f} inst/s "
                        f"{'ok' if run.ok else f'FAILED {run.stored}/{run.expected} {run.error}'}"
                    )
    return runs


def summarize(runs: Sequence[IngestRun], mean_bytes: float) -> Summary | None:
    """Median over successful runs (None if none succeeded)."""
    good = [r for r in runs if r.ok]
    if not good:
        return None
    rates = [r.expected / r.seconds for r in good]
    cpu = statistics.median(r.server_cpu_s * 1000 / r.expected for r in good)
    median = statistics.median(rates)
    return Summary(
        len(good),
        len(runs) - len(good),
        median,
        min(rates),
        max(rates),
        median * mean_bytes / MB,
        cpu,
    )
