"""``python -m bench.run``: PACS Hub vs Orthanc (ingest, C-FIND, C-MOVE, DICOMweb, ceilings,
archive integrity, compressed storage), and the hub alone (backup, post-processing).

Writes bench/RESULTS.md (``--quick``: bench/out/RESULTS.quick.md) and the raw
numbers to bench/out/results.json. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import data, dicomweb, find, ingest, move, stow
from bench.federation import run_federation
from bench.procs import run_parallel, storescu, sync
from bench.reading import reading
from bench.report import IndexBuild, Results, render
from bench.targets import (
    Destination,
    Target,
    WebTarget,
    keep_logs,
    start_target,
    start_web_target,
)

HERE = Path(__file__).resolve().parent
TARGETS = ("hub", "orthanc", "storescp")
PROCESSES = (1, 2, 4)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (minutes)")
    parser.add_argument("--reps", type=int, default=2, help="ingest repetitions per cell")
    parser.add_argument("--ct512-slices", type=int, default=500, help="slices per ct512 study")
    parser.add_argument("--ct64-studies", type=int, default=300, help="ct64 studies (10 inst)")
    parser.add_argument("--index-studies", type=int, default=100_000, help="C-FIND index size")
    parser.add_argument("--queries", type=int, default=50, help="timed C-FIND queries per type")
    parser.add_argument("--move-reps", type=int, default=3, help="C-MOVE repetitions per mode")
    parser.add_argument("--dd-mib", type=int, default=1024, help="dd test size")
    parser.add_argument("--web-reps", type=int, default=3, help="DICOMweb retrieve/STOW reps")
    parser.add_argument("--hub-processes", type=int, default=0, help="0 = hub default (per core)")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=(
            "ingest",
            "index",
            "dicomweb",
            "backup",
            "federation",
            "processing",
            "archive",
            "tiers",
        ),
        help="skip a section (index: C-FIND and C-MOVE; dicomweb: QIDO/WADO/STOW-RS;"
        " federation: federated C-FIND and retrieve on demand;"
        " backup: backfill and restore; processing: MPR, MIP, surfaces, rendering;"
        " archive: check every instance, rebuild the index; tiers: cold tier vs Orthanc's"
        " StorageCompression)",
    )
    parser.add_argument(
        "--backup-slices", type=int, default=1000, help="ct512 slices per study for backup (x2)"
    )
    parser.add_argument(
        "--fed-studies", type=int, default=300, help="studies (10 inst) per federated PACS"
    )
    parser.add_argument("--out", type=Path, default=HERE / "out", help="cache and work folder")
    parser.add_argument("--results", type=Path, default=None, help="markdown output")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.ct512_slices, args.ct64_studies = 1, 20, 12
        args.index_studies, args.queries, args.move_reps, args.dd_mib = 2000, 5, 1, 128
        args.web_reps = 1
        args.fed_studies = 20
        args.backup_slices = args.ct512_slices
    if args.results is None:
        args.results = args.out / "RESULTS.quick.md" if args.quick else HERE / "RESULTS.md"
    return args


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def effective_hub_processes(setting: int) -> int:
    return setting if setting > 0 else max(1, len(os.sched_getaffinity(0)))


def run_ingest(args: argparse.Namespace, res: Results, corpora: list[data.Corpus]) -> None:
    runs = ingest.run_matrix(
        corpora, TARGETS, PROCESSES, args.reps, args.out / "work", args.hub_processes, log
    )
    for corpus in corpora:
        for kind in TARGETS:
            for p in PROCESSES:
                key = (corpus.name, kind, p)
                cell = [r for r in runs if (r.dataset, r.target, r.processes) == key]
                res.ingest[key] = ingest.summarize(cell, corpus.mean_bytes)
    res.ingest_failures = [
        f"{r.dataset} {r.target} P={r.processes}: {r.stored}/{r.expected} {r.error[:120]}"
        for r in runs
        if not r.ok
    ]


def build_index(target: Target, idx: data.Corpus, ct512: data.Corpus) -> IndexBuild:
    """Send the index corpus (timed, 4 associations) and the C-MOVE study (untimed)."""
    sync()
    timed = ingest.send(target, idx, 4)
    run_parallel([storescu(target.ae_title, target.dicom_port, part) for part in ct512.split(2)])
    stored = ingest.settle_count(target, idx.count + ct512.count)
    if not timed.ok:
        log(f"index build errors: {timed.detail[:300]}")
    return IndexBuild(idx.count, timed.seconds, stored)


def run_index_phase(
    args: argparse.Namespace,
    res: Results,
    kind: str,
    corpora: tuple[data.Corpus, data.Corpus],
    dest: Destination,
) -> None:
    """Fresh target: build the index, time C-FIND and C-MOVE; then restart it on the
    same folder with DICOMweb on and time the DICOMweb reads; stop and delete it."""
    idx, ct512 = corpora
    workdir = args.out / "work" / f"{kind}-index"
    target = start_target(kind, workdir, args.hub_processes, [dest])
    try:
        log(f"{kind}: building the C-FIND index ({idx.count:,} + {ct512.count} instances)")
        build = build_index(target, idx, ct512)
        log(f"{kind}: index {build.stored:,} instances, {build.inst_s:.0f} inst/s")
        if "index" not in args.skip:
            res.index[kind] = build
            run_find_and_move(args, res, target, ct512, dest)
        if "dicomweb" not in args.skip:
            res.web_index[kind] = build.stored
            target.stop()
            web_target = restart_for_web(args, res, kind, workdir)
            if web_target is not None:
                target = web_target
                run_web_reads(args, res, target, ct512)
    finally:
        target.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def restart_for_web(
    args: argparse.Namespace, res: Results, kind: str, workdir: Path
) -> WebTarget | None:
    """The index target restarted with DICOMweb on; None (error recorded, log kept) if
    it does not start."""
    try:
        return start_web_target(kind, workdir, args.hub_processes, fresh=False)
    except RuntimeError as exc:
        kept = keep_logs(workdir, args.out / "logs", f"{kind}-dicomweb-restart")
        log(f"{kind}: restart with DICOMweb failed: {exc}; logs in {kept}")
        res.dicomweb[kind] = dicomweb.WebResults(errors=[f"restart: {exc} (logs: {kept})"])
        return None


def run_find_and_move(
    args: argparse.Namespace, res: Results, target: Target, ct512: data.Corpus, dest: Destination
) -> None:
    kind = target.name
    queries = find.build_queries(args.index_studies, args.queries)
    res.find[kind] = find.run_queries(target, queries)
    for name, lat in res.find[kind].items():
        log(f"{kind}: C-FIND {name}: p50 {lat.p50_ms:.1f} ms p95 {lat.p95_ms:.1f} ms")
    uid = data.study_uid("ct512", 0)
    runs = move.run_moves(
        target, dest, uid, ct512.count // 2, args.move_reps, args.out / "work" / "move", log
    )
    for mode in ("files", "ignore"):
        res.move[(kind, mode)] = move.summarize(runs, mode, ct512.mean_bytes)
    if not any(r.ok for r in runs):
        res.move_errors[kind] = runs[0].error or f"{runs[0].received} instances received"


def run_web_reads(
    args: argparse.Namespace, res: Results, target: WebTarget, ct512: data.Corpus
) -> None:
    """QIDO-RS with the C-FIND queries, then metadata, WADO-RS and frames of ct512 study 1."""
    queries = find.build_queries(args.index_studies, args.queries)
    series = dicomweb.Series.ct512(ct512.count // 2)
    samples = max(3, args.queries // 2)
    try:
        web = dicomweb.measure_reads(target, queries, series, samples, args.web_reps, log)
    except Exception as exc:  # a broken answer costs this section, not the whole run
        log(f"{target.name}: DICOMweb reads failed: {exc!r}")
        web = dicomweb.WebResults(errors=[f"reads: {type(exc).__name__}: {str(exc)[:200]}"])
    res.dicomweb[target.name] = web


def run_stow(args: argparse.Namespace, res: Results, ct512: data.Corpus) -> None:
    files = stow.study_files(ct512, ct512.count // 2)
    runs = stow.run_stow(
        files, ("hub", "orthanc"), args.web_reps, args.out / "work", args.hub_processes, log
    )
    for kind in ("hub", "orthanc"):
        web = res.dicomweb.setdefault(kind, dicomweb.WebResults())
        for mode in stow.MODES:
            web.stow[mode.label] = stow.summarize(runs, kind, mode)
        web.errors += [f"STOW-RS {r.mode}: {r.error}" for r in runs if r.target == kind and r.error]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["TCP_NODELAY"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    res = Results(
        config={"command": command.strip(), **{k: str(v) for k, v in vars(args).items()}},
        started=datetime.now(UTC),
        hub_processes=effective_hub_processes(args.hub_processes),
        orthanc_launcher="tests.peers.start_orthanc",
        dd_mib=args.dd_mib,
    )
    t0 = time.monotonic()
    log(f"disk ceiling: dd {args.dd_mib} MiB")
    res.dd = ceilings_dd(args)
    log("generating / loading data")
    ct512 = data.corpus(args.out, "ct512", args.ct512_slices)
    ct64 = data.corpus(args.out, "ct64", args.ct64_studies)
    idx = data.corpus(args.out, "idx", args.index_studies)
    for c in (ct512, ct64, idx):
        res.datasets[c.name] = (c.count, c.mean_bytes)
    if "ingest" not in args.skip:
        run_ingest(args, res, [ct512, ct64])
    if "index" not in args.skip:
        res.move_instances = ct512.count // 2
    if "index" not in args.skip or "dicomweb" not in args.skip:
        dest = move.destination()
        for kind in ("hub", "orthanc"):
            run_index_phase(args, res, kind, (idx, ct512), dest)
    if "dicomweb" not in args.skip:
        res.web_series = ct512.count // 2
        run_stow(args, res, ct512)
    section_lines = run_hub_sections(args, [ct512, ct64])
    if "federation" not in args.skip:
        res.federation = run_federation(args, log)
    if "processing" not in args.skip:
        from bench.processing import run_section

        section_lines += run_section(args.out, args.quick, log)
    res.finished = datetime.now(UTC)
    res.notes.append(f"Total bench runtime: {(time.monotonic() - t0) / 60:.1f} min.")
    args.results.write_text(render(res, reading(res)) + "\n".join(section_lines))
    (args.out / "results.json").write_text(json.dumps(_jsonable(res), indent=1, default=str))
    log(f"wrote {args.results} ({(time.monotonic() - t0) / 60:.1f} min)")
    return 0


def run_hub_sections(args: argparse.Namespace, corpora: list[data.Corpus]) -> list[str]:
    """The backup and archive sections' markdown lines."""
    lines: list[str] = []
    if "backup" not in args.skip:
        from bench.backup import run_backup

        corpus = data.corpus(args.out, "ct512", args.backup_slices)
        lines += run_backup(args.out, corpus, args.hub_processes, log)
    if "archive" not in args.skip:
        from bench.archive import run_archive

        lines += run_archive(args.out, corpora, args.hub_processes, log)
    if "tiers" not in args.skip:
        from bench.tiers import run_tiers

        lines += run_tiers(args.out, corpora[0], args.hub_processes, log)
    return lines


def ceilings_dd(args: argparse.Namespace) -> tuple[float, float, float]:
    from bench.ceilings import disk_write

    return disk_write(args.out / "dd.bin", args.dd_mib, 1 if args.quick else 3)


def _jsonable(res: Results) -> dict[str, object]:
    raw = dataclasses.asdict(res)
    for key in ("ingest", "move"):
        raw[key] = {" ".join(map(str, k)): v for k, v in raw[key].items()}
    return raw


if __name__ == "__main__":
    sys.exit(main())
