"""Array backend: one code path on numpy (CPU) or CuPy (CUDA), chosen at run time.

The heavy steps (resampling, projections, ray casting) take a :class:`Backend` and use
``backend.xp`` (the array module) and ``backend.map_coordinates`` (scipy.ndimage or
cupyx.scipy.ndimage). Data stays float32 on both. Results come back to the host as
numpy arrays with :meth:`Backend.to_host`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.ndimage  # type: ignore[import-untyped]

BackendName = Literal["auto", "numpy", "cupy"]


@dataclass(frozen=True)
class Backend:
    """An array module and its ndimage counterpart."""

    name: str
    xp: Any
    ndimage: Any

    def asarray(self, array: Any) -> Any:
        """``array`` on this backend's device, float32."""
        return self.xp.asarray(array, dtype=self.xp.float32)

    def to_host(self, array: Any) -> np.ndarray[Any, Any]:
        """A numpy copy of ``array`` (no copy when already on the host)."""
        if self.name == "cupy":
            return np.asarray(array.get())
        return np.asarray(array)

    def map_coordinates(self, volume: Any, coords: Any, cval: float, order: int = 1) -> Any:
        """Interpolate ``volume`` at ``coords`` (3, ...) in voxel index space."""
        return self.ndimage.map_coordinates(
            volume, coords, order=order, mode="constant", cval=cval, prefilter=False
        )


CPU = Backend("numpy", np, scipy.ndimage)


def cuda_available() -> bool:
    """Whether CuPy imports and sees at least one CUDA device."""
    try:
        cupy = importlib.import_module("cupy")
        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # any import or driver failure means: no GPU here
        return False


def get_backend(name: BackendName = "auto") -> Backend:
    """The backend called ``name``; ``auto`` picks CuPy when a CUDA device is present.

    Raises RuntimeError when ``cupy`` is asked for explicitly and is not usable.
    """
    if name == "numpy":
        return CPU
    if name == "auto" and not cuda_available():
        return CPU
    if name == "cupy" and not cuda_available():
        raise RuntimeError("backend 'cupy' asked for, but CuPy or a CUDA device is missing")
    cupy = importlib.import_module("cupy")
    ndimage = importlib.import_module("cupyx.scipy.ndimage")
    return Backend("cupy", cupy, ndimage)
