"""Post-processing benchmark: a synthetic CT through the workers.processing pipeline.

``python -m bench.processing`` writes a synthetic CT series (Part 10 files, CT Image,
512x512, 0.7 mm pixels, 1 mm slices, a body with lungs, spine and ribs) under
``bench/out/processing/`` and times, in a fresh process per case so peaks are its own:

- ``main`` (512x512x500 by default): volume assembly from the files, isotropic
  resample (0.7 mm), MPR of 3 planes (axial, coronal, sagittal through the centre),
  MIP along the slices, marching cubes at 300 HU, one volume rendering (bone, 512 px);
- ``big`` (3,000 slices; in-plane size reduced by ``--big-size`` on a shared machine):
  assembly, MIP, MPR 3 planes, chunked marching cubes, rendering, with host memory
  measured (peak RSS) and extrapolated to 512x512x3000.

Peak memory: the process's peak resident set (``ru_maxrss``) and, per stage, the peak of
Python-tracked allocations (``tracemalloc``, which numpy reports to) above the stage's
start. Results print as a Markdown table and go to bench/out/processing/results.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
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


def run_case(case: str, slices: int, size: int, backend_name: str) -> dict[str, Any]:
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

    paths = write_series(OUT / f"ct_{size}x{slices}", slices, size)
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


def _extrapolation(result: dict[str, Any], k: int, r: int, c: int) -> str:
    """Peak host memory at 512x512x3000 from this run's volume, working set and baseline.

    Working memory (tracemalloc peak of the worst stage beyond the volume) scales with
    the slice area (chunks, planes, images); the interpreter's baseline does not.
    """
    volume = result["volume_gib"]
    stages = result["stages"]
    working = max([s["peak_gib"] for s in stages[1:]] + [stages[0]["peak_gib"] - volume, 0.0])
    baseline = max(result["peak_rss_gib"] - volume - working, 0.1)
    full = 3000 * 512 * 512 * 4 / GIB
    scale = (3000 * 512 * 512) / (k * r * c)
    estimate = baseline + full + working * scale
    return (
        f"Extrapolated to 512x512x3000: volume {full:.2f} GiB + working set "
        f"{working:.3f} x {scale:.0f} + baseline {baseline:.2f} = about {estimate:.1f} GiB "
        "peak (budget 8 GiB)."
    )


def report(results: list[dict[str, Any]]) -> str:
    lines = ["# Post-processing benchmark (python -m bench.processing)", ""]
    for result in results:
        k, r, c = result["shape"]
        lines += [
            f"## {result['case']}: {k} slices x {r} x {c}, backend {result['backend']}",
            "",
            "| stage | seconds | peak above start (GiB, tracemalloc) |",
            "|---|---|---|",
        ]
        total = 0.0
        for row in result["stages"]:
            total += row["seconds"]
            lines.append(f"| {row['stage']} | {row['seconds']:.2f} | {row['peak_gib']:.2f} |")
        lines += [
            f"| **total** | **{total:.2f}** | |",
            "",
            f"Volume {result['volume_gib']:.2f} GiB float32; mesh {result['triangles']} "
            f"triangles; process peak RSS {result['peak_rss_gib']:.2f} GiB.",
        ]
        if result["case"] == "big":
            lines.append(_extrapolation(result, k, r, c))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--big-slices", type=int, default=3000)
    parser.add_argument("--big-size", type=int, default=128, help="512 for the full case")
    parser.add_argument("--skip", action="append", default=[], choices=["main", "big"])
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    parser.add_argument("--case", choices=["main", "big"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # child process: one case, JSON on stdout
        slices, size = (
            (args.slices, args.size) if args.case == "main" else (args.big_slices, args.big_size)
        )
        print(json.dumps(run_case(args.case, slices, size, args.backend)))
        return 0
    results = []
    for case in ("main", "big"):
        if case in args.skip:
            continue
        print(f"{case}:", file=sys.stderr, flush=True)
        child = subprocess.run(
            [sys.executable, "-m", "bench.processing", "--case", case, *(argv or sys.argv[1:])],
            check=True,
            capture_output=False,
            stdout=subprocess.PIPE,
            text=True,
        )
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    text = report(results)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
