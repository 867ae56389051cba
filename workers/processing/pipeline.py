"""The whole post-processing job as one call, for the task layer (Celery or a CLI).

``run_pipeline`` takes a series (Part 10 paths or datasets), runs the asked steps and
returns every result as validated DICOM (datasets and their Part 10 bytes), plus the
mesh as downloadable STL/OBJ. It is all or nothing: a bad input, a failed check or a
cancellation raises before anything is returned, so the caller ingests either every
result or none. UIDs are fixed by the input and the options: a rerun gives the same
instances.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydicom.dataset import Dataset

from workers.processing.backend import Backend, BackendName, get_backend
from workers.processing.errors import ProcessingError
from workers.processing.frames import Source
from workers.processing.monitor import CancelCheck, Monitor, ProgressCallback
from workers.processing.mpr import Orientation, SlabMode, iter_reformat, plan_stack
from workers.processing.outputs import (
    iter_reformat_datasets,
    mesh_dataset,
    projection_datasets,
    rendering_datasets,
)
from workers.processing.projection import ProjectionMode, project, rotating_mip
from workers.processing.render import render
from workers.processing.surface import isosurface, obj_bytes
from workers.processing.validation import validate
from workers.processing.volume import Volume, assemble_volumes

Direction = tuple[float, float, float]
Step = Literal["mpr", "mip", "rotating_mip", "surface", "render"]
STEPS: tuple[Step, ...] = ("mpr", "mip", "rotating_mip", "surface", "render")


@dataclass(frozen=True)
class PipelineOptions:
    """What to run and how; defaults suit a CT series."""

    steps: tuple[Step, ...] = ("mpr", "mip", "surface", "render")
    #: named views, or oblique ones as (row direction, column direction) in patient LPS
    orientations: tuple[Orientation | tuple[Direction, Direction], ...] = (
        "axial",
        "coronal",
        "sagittal",
    )
    slice_spacing: float | None = None
    slab_thickness: float = 0.0
    slab_mode: SlabMode = "average"
    projection: ProjectionMode = "mip"
    projection_axis: int = 0
    rotating_angles: int = 12
    threshold: float = 300.0
    mesh_step: int = 1
    preset: str = "bone"
    image_size: int = 512
    time_point: int = 0
    backend: BackendName = "auto"


@dataclass
class PipelineResult:
    """Validated outputs: datasets, their Part 10 bytes (same order), downloads by name."""

    datasets: list[Dataset] = field(default_factory=list)
    files: list[bytes] = field(default_factory=list)
    downloads: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Output:
    """One validated result instance, its Part 10 bytes, and any download beside it."""

    dataset: Dataset
    data: bytes
    downloads: dict[str, bytes] = field(default_factory=dict)


def run_pipeline(
    sources: Iterable[Source],
    options: PipelineOptions = PipelineOptions(),  # frozen, never mutated
    progress: ProgressCallback | None = None,
    cancelled: CancelCheck | None = None,
) -> PipelineResult:
    """Assemble the series and run ``options.steps``; all results or an exception."""
    result = PipelineResult()
    for output in iter_pipeline(sources, options, progress, cancelled):
        result.datasets.append(output.dataset)
        result.files.append(output.data)
        result.downloads.update(output.downloads)
    return result


def iter_pipeline(
    sources: Iterable[Source],
    options: PipelineOptions = PipelineOptions(),  # frozen, never mutated
    progress: ProgressCallback | None = None,
    cancelled: CancelCheck | None = None,
) -> Iterator[Output]:
    """The same as :func:`run_pipeline`, one validated output at a time.

    For long series: MPR images are computed, encoded and handed over one plane at a
    time, so memory holds the volume and one image, not every result. The caller stages
    what it receives and discards it all if the iteration raises (no partial series).
    """
    unknown = [s for s in options.steps if s not in STEPS]
    if unknown or not options.steps:
        raise ProcessingError(f"steps {list(options.steps)}, expected some of {list(STEPS)}")
    monitor = Monitor(progress, cancelled)
    volumes = assemble_volumes(sources, monitor.sub(0.0, 0.2))
    if not 0 <= options.time_point < len(volumes):
        raise ProcessingError(
            f"time point {options.time_point} asked, the series has {len(volumes)}"
        )
    volume = volumes[options.time_point]
    backend = get_backend(options.backend)
    share = 0.8 / len(options.steps)
    for index, step in enumerate(options.steps):
        sub = monitor.sub(0.2 + index * share, 0.2 + (index + 1) * share)
        for dataset, downloads in _run_step(step, volume, options, backend, sub):
            monitor.check()
            yield Output(dataset, validate(dataset), downloads)
    monitor.report(1.0, "done")


Produced = Iterator[tuple[Dataset, dict[str, bytes]]]


def _run_step(
    step: Step, volume: Volume, options: PipelineOptions, backend: Backend, monitor: Monitor
) -> Produced:
    if step == "mpr":
        yield from _mpr(volume, options, backend, monitor)
    elif step == "mip":
        image = project(volume, options.projection_axis, options.projection, backend)
        yield from ((ds, {}) for ds in projection_datasets(volume, [image], 911))
    elif step == "rotating_mip":
        size = options.image_size // 2
        cine = rotating_mip(volume, options.rotating_angles, None, None, backend, monitor, size)
        yield from ((ds, {}) for ds in projection_datasets(volume, cine, 912))
    elif step == "surface":
        mesh = isosurface(volume, options.threshold, options.mesh_step, monitor)
        dataset = mesh_dataset(volume, mesh, 921)
        length = int(dataset.EncapsulatedDocumentLength)
        stl = bytes(dataset.EncapsulatedDocument[:length])
        yield dataset, {"surface.stl": stl, "surface.obj": obj_bytes(mesh)}
    else:
        size = options.image_size
        view = render(volume, options.preset, backend=backend, monitor=monitor, max_size=size)
        yield from ((ds, {}) for ds in rendering_datasets(volume, [view], 931))


def _mpr(volume: Volume, options: PipelineOptions, backend: Backend, monitor: Monitor) -> Produced:
    count = len(options.orientations)
    for number, orientation in enumerate(options.orientations):
        stack = plan_stack(
            volume,
            orientation,
            options.slice_spacing,
            options.slab_thickness,
            options.slab_mode,
        )
        sub = monitor.sub(number / count, (number + 1) / count)
        images = iter_reformat(volume, stack, backend, sub)
        for dataset in iter_reformat_datasets(volume, stack, images, 901 + number):
            yield dataset, {}
