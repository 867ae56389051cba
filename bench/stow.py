"""STOW-RS ingest (PS3.18 10.5): the first ``ct512`` study POSTed to /studies of a
freshly started target, in multipart/related requests sent by concurrent clients.

Two ways of sending, both with STOW_CLIENTS requests in flight: one instance per
request (what a viewer saving objects does) and BATCH instances per request (what a
bulk uploader does). The request bodies are built before the timed window; the window
is first request to last answer. Every answer must be 200 with one Referenced SOP
Sequence item per instance sent and no Failed SOP Sequence item, and the target must
hold every instance afterwards.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import data
from bench.dicomweb import DICOM_JSON, IDENTITY, TIMEOUT, BadAnswer, Throughput, throughput
from bench.ingest import settle_count
from bench.multipart import stow_body, stow_content_type
from bench.procs import sync
from bench.targets import keep_logs, start_web_target

STOW_CLIENTS = 4
BATCH = 10
REFERENCED = "00081199"
FAILED = "00081198"


@dataclass(frozen=True, slots=True)
class StowMode:
    """How the study is cut into requests."""

    per_request: int
    clients: int = STOW_CLIENTS

    @property
    def label(self) -> str:
        unit = "instance" if self.per_request == 1 else "instances"
        return f"{self.per_request} {unit}/request, {self.clients} clients"


MODES = (StowMode(1), StowMode(BATCH))


@dataclass(frozen=True, slots=True)
class StowRun:
    target: str
    mode: str
    seconds: float
    expected: int
    stored: int
    size: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.stored == self.expected


def study_files(corpus: data.Corpus, slices: int) -> list[Path]:
    """The files of ``ct512`` study 1 (indexes 0..slices-1, round-robin over the parts)."""
    return [corpus.root / f"part{i % data.PARTS}" / f"{i:07d}.dcm" for i in range(slices)]


def post(client: httpx.Client, url: str, body: bytes, count: int) -> None:
    """One STOW-RS request; raise unless every instance in it is referenced as stored."""
    headers = {
        "Content-Type": stow_content_type(),
        "Accept": DICOM_JSON,
        "Accept-Encoding": IDENTITY,
    }
    answer = client.post(url + "/studies", content=body, headers=headers)
    if answer.status_code != 200:
        raise BadAnswer(f"STOW-RS: HTTP {answer.status_code} {answer.text[:200]}")
    module = answer.json()
    stored = len(module.get(REFERENCED, {}).get("Value", []))
    failed = len(module.get(FAILED, {}).get("Value", []))
    if stored != count or failed:
        raise BadAnswer(f"STOW-RS: {stored} referenced, {failed} failed, {count} sent")


def stow_once(
    kind: str, files: Sequence[Path], mode: StowMode, workdir: Path, hub_processes: int
) -> StowRun:
    """A fresh target, the study POSTed in ``mode``, the count checked, the target gone."""
    batches = [files[i : i + mode.per_request] for i in range(0, len(files), mode.per_request)]
    bodies = [(stow_body(batch), len(batch)) for batch in batches]
    size = sum(len(body) for body, _ in bodies)
    try:
        target = start_web_target(kind, workdir, hub_processes, fresh=True)
    except RuntimeError as exc:
        kept = keep_logs(workdir, workdir.parent.parent / "logs", f"{kind}-stow-start")
        return StowRun(kind, mode.label, 0.0, len(files), 0, size, f"{exc} (logs: {kept})")
    error, seconds = "", 0.0
    try:
        sync()
        limits = httpx.Limits(max_connections=mode.clients)
        with (
            httpx.Client(timeout=TIMEOUT, limits=limits) as client,
            ThreadPoolExecutor(mode.clients) as pool,
        ):
            url = target.dicomweb_url
            start = time.perf_counter()
            try:
                list(pool.map(lambda b: post(client, url, *b), bodies))
            except (httpx.HTTPError, BadAnswer, ValueError) as exc:
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            seconds = time.perf_counter() - start
        stored = settle_count(target, len(files))
    finally:
        target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return StowRun(kind, mode.label, seconds, len(files), stored, size, error)


def run_stow(
    files: Sequence[Path],
    kinds: Sequence[str],
    reps: int,
    workdir: Path,
    hub_processes: int,
    log: Callable[[str], None],
) -> list[StowRun]:
    """Every (target, mode) ``reps`` times, interleaved rep > target > mode."""
    runs = []
    for rep in range(reps):
        for kind in kinds:
            for mode in MODES:
                run = stow_once(kind, files, mode, workdir / f"{kind}-stow", hub_processes)
                runs.append(run)
                log(
                    f"STOW-RS rep {rep + 1}/{reps} {kind} {mode.label}: "
                    f"{run.expected / run.seconds if run.seconds else 0:.0f} inst/s "
                    f"{'ok' if run.ok else f'FAILED {run.stored}/{run.expected} {run.error}'}"
                )
    return runs


def summarize(runs: Sequence[StowRun], kind: str, mode: StowMode) -> Throughput | None:
    mine = [r for r in runs if r.target == kind and r.mode == mode.label]
    cells = [(r.seconds, r.stored if r.ok else 0, r.size) for r in mine]
    return throughput(cells, mine[0].expected) if mine else None
