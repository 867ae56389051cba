"""Array backend: numpy always; CuPy on a CUDA device, compared with the CPU path.

Tolerances (float32 both sides, same trilinear interpolation, different summation
order): resampled and projected values within 1e-3 HU relative 1e-5; rendered RGB within
2 levels of 255 on 99.9 % of pixels (a sample on a transfer-function bin edge may land
in the neighbouring bin).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.processing.helpers import CT, files, sphere, synthetic
from workers.processing import (
    assemble_volume,
    get_backend,
    project,
    reformat,
    render,
    resample_isotropic,
    rotating_mip,
)
from workers.processing.backend import CPU, cuda_available


def test_numpy_backend_is_the_default_without_a_gpu() -> None:
    assert get_backend("numpy") is CPU
    if not cuda_available():
        assert get_backend("auto") is CPU
        with pytest.raises(RuntimeError, match="CuPy or a CUDA device is missing"):
            get_backend("cupy")


def test_cpu_backend_round_trips_host_arrays() -> None:
    data = np.arange(6, dtype=np.float64).reshape(2, 3)
    on_device = CPU.asarray(data)
    assert on_device.dtype == np.float32
    np.testing.assert_array_equal(CPU.to_host(on_device), data)


gpu = pytest.mark.skipif(not cuda_available(), reason="no CUDA device (CuPy) here")


@pytest.fixture(scope="module")
def ct():  # type: ignore[no-untyped-def]
    return assemble_volume(files(CT))


@pytest.mark.gpu
@gpu
def test_gpu_resample_and_projection_match_cpu(ct) -> None:  # type: ignore[no-untyped-def]
    cupy = get_backend("cupy")
    iso_cpu = resample_isotropic(ct, 1.0)
    iso_gpu = resample_isotropic(ct, 1.0, backend=cupy)
    np.testing.assert_allclose(iso_gpu.voxels, iso_cpu.voxels, rtol=1e-5, atol=1e-3)
    for axis in (0, 1, 2):
        for mode in ("mip", "minip", "average"):
            cpu = project(ct, axis, mode).image  # type: ignore[arg-type]
            gpu_image = project(ct, axis, mode, backend=cupy).image  # type: ignore[arg-type]
            np.testing.assert_allclose(gpu_image, cpu, rtol=1e-5, atol=1e-3)


@pytest.mark.gpu
@gpu
def test_gpu_mpr_and_rotating_mip_match_cpu(ct) -> None:  # type: ignore[no-untyped-def]
    cupy = get_backend("cupy")
    for orientation in ("axial", "coronal", "sagittal"):
        cpu = reformat(ct, orientation, slice_spacing=20.0, slab_thickness=5.0)
        gpu_stack = reformat(ct, orientation, 20.0, 5.0, backend=cupy)
        np.testing.assert_allclose(gpu_stack.images, cpu.images, rtol=1e-5, atol=1e-2)
    cine_cpu = rotating_mip(ct, 4, max_size=128)
    cine_gpu = rotating_mip(ct, 4, max_size=128, backend=cupy)
    for a, b in zip(cine_gpu, cine_cpu, strict=True):
        np.testing.assert_allclose(a.image, b.image, rtol=1e-5, atol=1e-2)


@pytest.mark.gpu
@gpu
def test_gpu_rendering_matches_cpu(ct) -> None:  # type: ignore[no-untyped-def]
    cupy = get_backend("cupy")
    for volume in (ct, synthetic(sphere(inside=1500.0))):
        cpu = render(volume, "bone", max_size=256).image.astype(int)
        gpu_image = render(volume, "bone", max_size=256, backend=cupy).image.astype(int)
        assert np.mean(np.abs(gpu_image - cpu) <= 2) >= 0.999
