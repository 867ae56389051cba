"""Post-processing benchmark: a synthetic CT through the workers.processing pipeline.

A section of ``make bench`` (``python -m bench.run``, ``--skip processing``), or alone:
``python -m bench.processing [--quick]``. It writes a synthetic CT series (Part 10
files, CT Image, 512x512, 0.7 mm pixels, 1 mm slices, a body with lungs, spine and
ribs) under ``bench/out/processing/`` and times, in a fresh process per case so peaks
are its own, on the CPU (numpy) and, when CuPy sees a CUDA device, on the GPU:

- ``main`` (512x512x500 by default): volume assembly from the files, isotropic
  resample (0.7 mm), MPR of 3 planes (axial, coronal, sagittal through the centre),
  MIP along the slices, marching cubes at 300 HU, one volume rendering (bone, 512 px);
- ``big`` (3,000 slices; in-plane size reduced by ``--big-size`` on a shared machine):
  assembly, MIP, MPR 3 planes, chunked marching cubes, rendering, with host memory
  measured (peak RSS) and extrapolated to 512x512x3000.

Peak memory: the process's peak resident set (``ru_maxrss``) and, per stage, the peak of
Python-tracked allocations (``tracemalloc``, which numpy reports to) above the stage's
start. The section (tables and targets: CPU pipeline under 60 s on this machine, GPU at
least 10x faster, 3,000 slices within 8 GiB of host memory) goes into bench/RESULTS.md,
or alone into bench/out/processing/results.md. ``--quick`` uses small sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

OUT = Path(__file__).resolve().parent / "out" / "processing"
PIXEL_MM = 0.7
SLICE_MM = 1.0
GIB = 1024**3
CPU_TARGET_S = 60.0
GPU_TARGET_SPEEDUP = 10.0
MEMORY_BUDGET_GIB = 8.0
NO_DEVICE = "not measured: no device"


@dataclass(frozen=True)
class Sizes:
    """Slices and in-plane size of the two cases."""

    slices: int = 500
    size: int = 512
    big_slices: int = 3000
    big_size: int = 128  # 512 for the full-size 3,000-slice case (12 GiB of float32...)

    def of(self, case: str) -> tuple[int, int]:
        return (self.slices, self.size) if case == "main" else (self.big_slices, self.big_size)


FULL = Sizes()
QUICK = Sizes(slices=60, size=128, big_slices=600, big_size=64)


def phantom_slice(size: int, z_index: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """HU of one axial slice: air, a soft-tissue ellipse, two lungs, a spine, ribs."""
    mm = (np.arange(size) - size / 2) * PIXEL_MM * 512 / size
    y, x = np.meshgrid(mm, mm, indexing="ij")
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    body = (x / 170) ** 2 + (y / 120) ** 2 <= 1
    hu[body] = 40 + rng.normal(0, 10, int(body.sum()))
    for side in (-1, 1):
        lung = ((x - side * 70) / 55) ** 2 + ((y + 5) / 75) ** 2 <= 1
        hu[lung] = -800 + rng.normal(0, 20, int(lung.sum()))
    spine = x**2 + (y - 85) ** 2 <= 16**2
    hu[spine] = 700
    if (z_index // 12) % 2 == 0:  # ribs every 24 mm: an elliptic band just inside the skin
        ring = ((x / 160) ** 2 + (y / 110) ** 2 <= 1) & ((x / 150) ** 2 + (y / 100) ** 2 > 1)
        hu[ring & (y > -60)] = 600
    return hu


def write_series(folder: Path, slices: int, size: int) -> list[Path]:
    """The synthetic CT series as Part 10 files (made once, reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{k:05d}.dcm" for k in range(slices)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(7)
    study, series, frame = (generate_uid(entropy_srcs=[folder.name, w]) for w in "SRF")
    for k, path in enumerate(paths):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[folder.name, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "BENCH^CT", "B1", "", ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "", "1", ""
        ds.ReferringPhysicianName, ds.Modality, ds.SeriesNumber = "", "CT", 1
        ds.InstanceNumber, ds.ImageType = k + 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-256 * PIXEL_MM, -256 * PIXEL_MM, k * SLICE_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        spacing = PIXEL_MM * 512 / size
        ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], SLICE_MM
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        stored = np.clip(np.rint(phantom_slice(size, k, rng) + 1024), 0, 4095).astype("<u2")
        ds.PixelData = stored.tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return paths


class Stages:
    """Wall time and tracemalloc peak of each stage."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, action: Callable[[], Any]) -> Any:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - base
        self.rows.append({"stage": name, "seconds": seconds, "peak_gib": peak / GIB})
        print(f"  {name}: {seconds:.2f} s, +{peak / GIB:.2f} GiB", file=sys.stderr, flush=True)
        return result


def run_case(case: str, slices: int, size: int, backend_name: str, out: Path) -> dict[str, Any]:
    """One case in this process; returns its timings and memory."""
    from workers.processing import (
        assemble_volume,
        get_backend,
        isosurface,
        project,
        reformat_plane,
        render,
        resample_isotropic,
    )
    from workers.processing.geometry import plane_through
    from workers.processing.mpr import ORIENTATIONS

    paths = write_series(out / f"ct_{size}x{slices}", slices, size)
    backend = get_backend(backend_name)  # type: ignore[arg-type]
    tracemalloc.start()
    stages = Stages()
    volume = stages.run("volume assembly", lambda: assemble_volume(paths))

    def three_planes() -> None:
        for row, column in ORIENTATIONS.values():
            reformat_plane(volume, plane_through(volume, row, column), backend=backend)

    if case == "main":
        stages.run("isotropic resample", lambda: resample_isotropic(volume, backend=backend))
    stages.run("MPR 3 planes", three_planes)
    stages.run("MIP (slices axis)", lambda: project(volume, 0, "mip", backend))
    mesh = stages.run("marching cubes 300 HU", lambda: isosurface(volume, 300.0))
    stages.run("volume rendering (bone, 512 px)", lambda: render(volume, backend=backend))
    tracemalloc.stop()
    return {
        "case": case,
        "shape": list(volume.shape),
        "volume_gib": volume.voxels.nbytes / GIB,
        "triangles": len(mesh.faces),
        "backend": backend.name,
        "stages": stages.rows,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
    }


def _extrapolation(result: dict[str, Any]) -> tuple[float, str]:
    """Peak host memory at 512x512x3000 from this run's volume, working set and baseline.

    Working memory (tracemalloc peak of the worst stage beyond the volume) scales with
    the slice area (chunks, planes, images); the interpreter's baseline does not.
    """
    k, r, c = result["shape"]
    volume = result["volume_gib"]
    stages = result["stages"]
    working = max([s["peak_gib"] for s in stages[1:]] + [stages[0]["peak_gib"] - volume, 0.0])
    baseline = max(result["peak_rss_gib"] - volume - working, 0.1)
    full = 3000 * 512 * 512 * 4 / GIB
    scale = (3000 * 512 * 512) / (k * r * c)
    estimate = baseline + full + working * scale
    return estimate, (
        f"Extrapolated to 512x512x3000: volume {full:.2f} GiB + working set "
        f"{working:.3f} x {scale:.0f} + baseline {baseline:.2f} = about {estimate:.1f} GiB "
        f"peak (budget {MEMORY_BUDGET_GIB:.0f} GiB)."
    )


def measure(case: str, sizes: Sizes, backend: str, out: Path) -> dict[str, Any]:
    """One case in a fresh process (its own peak memory); its JSON result."""
    slices, size = sizes.of(case)
    child = subprocess.run(
        [sys.executable, "-m", "bench.processing", "--case", case, "--slices", str(slices),
         "--size", str(size), "--backend", backend, "--out", str(out)],
        check=True, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def _total(result: dict[str, Any]) -> float:
    return float(sum(row["seconds"] for row in result["stages"]))


def _stage_table(cpu: dict[str, Any], gpu: dict[str, Any] | None) -> list[str]:
    lines = [
        "| stage | CPU s | GPU s | GPU speed-up | CPU peak above start (GiB, tracemalloc) |",
        "|---|---|---|---|---|",
    ]
    gpu_rows = {row["stage"]: row for row in gpu["stages"]} if gpu else {}
    for row in [*cpu["stages"], {"stage": "**total**", "seconds": _total(cpu), "peak_gib": None}]:
        other = gpu_rows.get(row["stage"]) or (
            {"seconds": _total(gpu)} if gpu and row["stage"] == "**total**" else None
        )
        gpu_cell = f"{other['seconds']:.2f}" if other else NO_DEVICE
        speedup = f"{row['seconds'] / other['seconds']:.1f}x" if other else "-"
        peak = "" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        lines.append(f"| {row['stage']} | {row['seconds']:.2f} | {gpu_cell} | {speedup} | {peak} |")
    return lines


def section(results: dict[str, dict[str, Any]], sizes: Sizes) -> list[str]:
    """The RESULTS.md section: the main case (CPU, GPU), the 3,000-slice case, targets."""
    lines = ["", "## Post-processing (synthetic CT through workers.processing)", ""]
    cores = len(os.sched_getaffinity(0))
    cpu, gpu, big = results.get("main"), results.get("main-gpu"), results.get("big")
    checks: list[tuple[str, str]] = []
    if cpu:
        k, r, c = cpu["shape"]
        lines += [
            f"Synthetic CT, {k} slices of {r}x{c} (0.7 mm pixels, 1 mm slices), written as "
            "Part 10 files then assembled, resampled to 0.7 mm isotropic, MPR of 3 planes, "
            "MIP, marching cubes at 300 HU, one bone volume rendering of 512 px; each case in "
            f"a fresh process on {cores} cores (`python -m bench.processing`).",
            "",
            *_stage_table(cpu, gpu),
            "",
            f"Volume {cpu['volume_gib']:.2f} GiB float32; mesh {cpu['triangles']} triangles; "
            f"CPU process peak RSS {cpu['peak_rss_gib']:.2f} GiB.",
            "",
        ]
        full = (k, r, c) == (FULL.slices, FULL.size, FULL.size)
        met = "yes" if _total(cpu) < CPU_TARGET_S else "**no**"
        checks.append(
            (
                f"CPU pipeline 512x512x500 under {CPU_TARGET_S:.0f} s on {cores} cores",
                f"{met} ({_total(cpu):.1f} s)"
                if full
                else f"not measured at full size (--quick: {k}x{r}x{c}, {_total(cpu):.1f} s)",
            )
        )
        speedup = _total(cpu) / _total(gpu) if gpu else 0.0
        checks.append(
            (
                f"GPU pipeline at least {GPU_TARGET_SPEEDUP:.0f}x faster than CPU",
                NO_DEVICE if not gpu else
                f"{'yes' if speedup >= GPU_TARGET_SPEEDUP else '**no**'} ({speedup:.1f}x)",
            )
        )  # fmt: skip
    if big:
        k, r, c = big["shape"]
        estimate, words = _extrapolation(big)
        measured = (r, c) == (512, 512)
        peak = big["peak_rss_gib"] if measured else estimate
        lines += [
            f"3,000-slice case: {k} slices of {r}x{c} (in-plane size "
            f"{'full' if measured else 'reduced on this shared machine'}): assembly, MPR, "
            f"MIP, chunked marching cubes, rendering in {_total(big):.1f} s; process peak RSS "
            f"{big['peak_rss_gib']:.2f} GiB. {'' if measured else words}",
            "",
        ]
        met = "yes" if peak <= MEMORY_BUDGET_GIB else "**no**"
        how = "measured" if measured else "extrapolated"
        checks.append(
            (
                f"512x512x3000 series within {MEMORY_BUDGET_GIB:.0f} GiB of host memory",
                f"{met} ({how}: {peak:.1f} GiB)"
                + ("" if k == 3000 else f"; --quick: {k} slices, not the 3,000 of the target"),
            )
        )
    lines += ["| post-processing target | met |", "|---|---|"]
    lines += [f"| {name} | {verdict} |" for name, verdict in checks]
    return [*lines, ""]


def run_section(
    out: Path, quick: bool, log: Callable[[str], None], skip: tuple[str, ...] = ()
) -> list[str]:
    """Measure every case (CPU; GPU when a device is present); the RESULTS.md lines."""
    from workers.processing.backend import cuda_available

    sizes = QUICK if quick else FULL
    folder = out / "processing"
    cases = [c for c in ("main", "big") if c not in skip]
    runs = [(c, c, "numpy") for c in cases]
    if "main" in cases and cuda_available():
        runs.insert(1, ("main-gpu", "main", "cupy"))
    results: dict[str, dict[str, Any]] = {}
    for name, case, backend in runs:
        log(f"processing: {name}, {'x'.join(map(str, sizes.of(case)))} ({backend})")
        results[name] = measure(case, sizes, backend, folder)
        log(f"processing: {name}: {_total(results[name]):.1f} s")
    return section(results, sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--skip", action="append", default=[], choices=["main", "big"])
    parser.add_argument("--out", type=Path, default=OUT.parent, help="bench work folder")
    parser.add_argument("--case", choices=["main", "big"], help=argparse.SUPPRESS)
    parser.add_argument("--slices", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="numpy", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # child process: one case, JSON on stdout
        result = run_case(args.case, args.slices, args.size, args.backend, args.out)
        print(json.dumps(result))
        return 0
    lines = run_section(args.out, args.quick, lambda m: print(m, file=sys.stderr), args.skip)
    text = "\n".join(lines)
    (args.out / "processing").mkdir(parents=True, exist_ok=True)
    (args.out / "processing" / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
