"""The whole post-processing job as one call, for the task layer (Celery or a CLI).

``run_pipeline`` takes a series (Part 10 paths or datasets), runs the asked steps and
returns every result as validated DICOM (datasets and their Part 10 bytes), plus the
mesh as downloadable STL/OBJ. It is all or nothing: a bad input, a failed check or a
cancellation raises before anything is returned, so the caller ingests either every
result or none. UIDs are fixed by the input and the options: a rerun gives the same
instances.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydicom.dataset import Dataset

from workers.processing.backend import BackendName, get_backend
from workers.processing.errors import ProcessingError
from workers.processing.frames import Source
from workers.processing.monitor import CancelCheck, Monitor, ProgressCallback
from workers.processing.mpr import Orientation, SlabMode, reformat
from workers.processing.outputs import (
    mesh_dataset,
    projection_datasets,
    reformat_datasets,
    rendering_datasets,
)
from workers.processing.projection import ProjectionMode, project, rotating_mip
from workers.processing.render import render
from workers.processing.surface import isosurface, obj_bytes
from workers.processing.validation import validate
from workers.processing.volume import assemble_volumes

Step = Literal["mpr", "mip", "rotating_mip", "surface", "render"]
STEPS: tuple[Step, ...] = ("mpr", "mip", "rotating_mip", "surface", "render")


@dataclass(frozen=True)
class PipelineOptions:
    """What to run and how; defaults suit a CT series."""

    steps: tuple[Step, ...] = ("mpr", "mip", "surface", "render")
    orientations: tuple[Orientation, ...] = ("axial", "coronal", "sagittal")
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


def run_pipeline(
    sources: Iterable[Source],
    options: PipelineOptions = PipelineOptions(),  # frozen, never mutated
    progress: ProgressCallback | None = None,
    cancelled: CancelCheck | None = None,
) -> PipelineResult:
    """Assemble the series and run ``options.steps``; see the module docstring."""
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
    result = PipelineResult()
    share = 0.75 / len(options.steps)
    for index, step in enumerate(options.steps):
        sub = monitor.sub(0.2 + index * share, 0.2 + (index + 1) * share)
        datasets: list[Dataset] = []
        if step == "mpr":
            for number, orientation in enumerate(options.orientations):
                stack = reformat(
                    volume,
                    orientation,
                    options.slice_spacing,
                    options.slab_thickness,
                    options.slab_mode,
                    backend=backend,
                    monitor=sub.sub(number / len(options.orientations), 1.0),
                )
                datasets += reformat_datasets(volume, stack, 901 + number)
        elif step == "mip":
            image = project(volume, options.projection_axis, options.projection, backend)
            datasets = projection_datasets(volume, [image], 911)
        elif step == "rotating_mip":
            cine = rotating_mip(
                volume,
                options.rotating_angles,
                backend=backend,
                monitor=sub,
                max_size=options.image_size // 2,
            )
            datasets = projection_datasets(volume, cine, 912)
        elif step == "surface":
            mesh = isosurface(volume, options.threshold, options.mesh_step, sub)
            datasets = [mesh_dataset(volume, mesh, 921)]
            length = int(datasets[0].EncapsulatedDocumentLength)
            result.downloads["surface.stl"] = bytes(datasets[0].EncapsulatedDocument[:length])
            result.downloads["surface.obj"] = obj_bytes(mesh)
        else:
            view = render(
                volume, options.preset, backend=backend, monitor=sub, max_size=options.image_size
            )
            datasets = rendering_datasets(volume, [view], 931)
        result.datasets += datasets
    for number, dataset in enumerate(result.datasets):
        monitor.sub(0.95, 1.0).report(number / len(result.datasets), "validating outputs")
        result.files.append(validate(dataset))
    monitor.report(1.0, "done")
    return result
