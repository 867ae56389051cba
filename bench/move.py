"""C-MOVE egress: one study moved by dcmtk movescu to a dcmtk storescp.

The storescp listens on a port chosen before the archives start, so both can
register it as a move destination (hub: ``pacs-hub nodes add``; Orthanc:
``DicomModalities``). The timed window is the movescu process (the move is
synchronous in both archives); the files the storescp holds afterwards are counted.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BENCH_AE, LOOPBACK, StoreScp, dcmtk, dcmtk_env, free_port
from bench.targets import Destination, Target

MOVE_AE = "BENCHSCP"
MB = 1_000_000


@dataclass(frozen=True, slots=True)
class MoveRun:
    mode: str
    seconds: float
    expected: int
    received: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.received == self.expected and not self.error


@dataclass(frozen=True, slots=True)
class MoveSummary:
    mode: str
    runs: int
    failed: int
    inst_s: float
    inst_min: float
    inst_max: float
    mb_s: float
    note: str = ""


def destination() -> Destination:
    """The move destination, with a port reserved for this benchmark run."""
    return Destination(MOVE_AE, free_port())


def movescu(target: Target, study_uid: str) -> tuple[float, str]:
    args = [
        dcmtk("movescu"),
        "-S",
        "-aet",
        BENCH_AE,
        "-aec",
        target.ae_title,
        "-aem",
        MOVE_AE,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        LOOPBACK,
        str(target.dicom_port),
    ]
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=dcmtk_env(), timeout=600)
    seconds = time.perf_counter() - start
    text = out.stdout + out.stderr
    error = "" if out.returncode == 0 else f"rc={out.returncode}"
    if "Success" not in text.split("Final Move Response")[-1][:200]:
        error = error or _last_lines(text)
    return seconds, error


def _last_lines(text: str) -> str:
    return " | ".join(text.strip().splitlines()[-3:])[:300]


def move_once(
    target: Target, dest: Destination, study_uid: str, expected: int, workdir: Path, mode: str
) -> MoveRun:
    """One C-MOVE into a fresh storescp (``+B`` files, or ``--ignore``)."""
    shutil.rmtree(workdir, ignore_errors=True)
    scp = StoreScp(workdir, MOVE_AE, ignore=mode == "ignore", port=dest.port)
    try:
        seconds, error = movescu(target, study_uid)
        received = scp.count() if mode == "files" else scp.received()
    finally:
        scp.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return MoveRun(mode, seconds, expected, received, error)


def run_moves(
    target: Target,
    dest: Destination,
    study_uid: str,
    expected: int,
    reps: int,
    workdir: Path,
    log: Callable[[str], None],
) -> list[MoveRun]:
    runs = []
    for rep in range(reps):
        for mode in ("files", "ignore"):
            run = move_once(target, dest, study_uid, expected, workdir, mode)
            runs.append(run)
            log(
                f"move rep {rep + 1}/{reps} {target.name} {mode}: "
                f"{run.received / run.seconds:.0f} inst/s, {run.received}/{expected}"
                f"{'' if run.ok else ' FAILED ' + run.error}"
            )
    return runs


def summarize(runs: list[MoveRun], mode: str, mean_bytes: float) -> MoveSummary | None:
    mine = [r for r in runs if r.mode == mode]
    good = [r for r in mine if r.ok]
    if not good:
        return None
    rates = [r.expected / r.seconds for r in good]
    median = statistics.median(rates)
    return MoveSummary(
        mode,
        len(good),
        len(mine) - len(good),
        median,
        min(rates),
        max(rates),
        median * mean_bytes / MB,
    )
