"""Post-processing of image series: volume, MPR, projections, surfaces, rendering → DICOM.

No Celery here: the task layer calls :func:`run_pipeline` (or the single steps) with the
series' Part 10 paths or datasets, a progress callback ``(percent, stage)`` and a cancel
check, and ingests the returned Part 10 bytes.
"""

from workers.processing.backend import Backend, get_backend
from workers.processing.errors import ProcessingCancelled, ProcessingError
from workers.processing.monitor import Monitor
from workers.processing.mpr import reformat, reformat_plane, resample_isotropic
from workers.processing.outputs import (
    mesh_dataset,
    projection_datasets,
    reformat_datasets,
    rendering_datasets,
)
from workers.processing.pipeline import (
    Output,
    PipelineOptions,
    PipelineResult,
    iter_pipeline,
    run_pipeline,
)
from workers.processing.projection import project, rotating_mip
from workers.processing.render import PRESETS, render
from workers.processing.surface import is_watertight, isosurface, obj_bytes, stl_bytes
from workers.processing.validation import validate
from workers.processing.volume import Volume, assemble_volume, assemble_volumes

__all__ = [
    "PRESETS",
    "Backend",
    "Monitor",
    "Output",
    "PipelineOptions",
    "PipelineResult",
    "ProcessingCancelled",
    "ProcessingError",
    "Volume",
    "assemble_volume",
    "assemble_volumes",
    "get_backend",
    "is_watertight",
    "isosurface",
    "iter_pipeline",
    "mesh_dataset",
    "obj_bytes",
    "project",
    "projection_datasets",
    "reformat",
    "reformat_datasets",
    "reformat_plane",
    "render",
    "rendering_datasets",
    "resample_isotropic",
    "rotating_mip",
    "run_pipeline",
    "stl_bytes",
    "validate",
]
