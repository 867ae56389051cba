"""Rendering one frame to a consumer image (PS3.18 8.3.5.1, 10.4.1.1.3; PS3.3 C.11).

The grayscale pipeline is the one PS3.3 C.11 describes, on the stored values:

1. Modality LUT (C.11.1): Rescale Slope/Intercept, from the top level or, for
   enhanced multi-frame objects, the frame's Pixel Value Transformation (per-frame,
   then shared functional groups); a Modality LUT Sequence through pydicom;
2. VOI LUT (C.11.2): the ``window`` query parameter (``center,width[,function]``,
   PS3.18 8.3.5.1.4) or else the stored window (Window Center/Width, first value, or the
   Frame VOI LUT of the functional groups) with VOI LUT Function LINEAR, LINEAR_EXACT
   or SIGMOID (C.11.2.1.2, C.11.2.1.3); a VOI LUT Sequence through pydicom; else the
   frame's own value range;
3. MONOCHROME1 is inverted (C.7.6.3.1.2) so that the output is always "white is high".

Colour frames come from pydicom already RGB (YBR_FULL/YBR_FULL_422/YBR_ICT/YBR_RCT
converted); PALETTE COLOR goes through its lookup tables (C.7.6.3.1.5). The image is
then cropped to the viewport's source region, if any, and fitted into the ``viewport``
(PS3.18 8.3.5.1.3) keeping its aspect ratio, and
encoded by Pillow as JPEG (``quality``, PS3.18 8.3.5.1.2), PNG or GIF.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

from pacs_hub.dicom.frames import StoredPixels, decode_frame

FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window: center, width and function (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """What a rendered request asks for (PS3.18 8.3.5.1)."""

    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = 90


def parse_window(text: str) -> Window:
    """``center,width[,function]``; raise ValueError when it is not one."""
    values = [v.strip() for v in text.split(",")]
    if len(values) not in (2, 3):
        raise ValueError(f"window {text[:40]!r}: expected center,width,function")
    center, width = float(values[0]), float(values[1])
    function = FUNCTIONS.get(values[2].lower() if len(values) == 3 else "linear")
    if function is None:
        raise ValueError(f"window function {values[2][:20]!r}: expected {', '.join(FUNCTIONS)}")
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise ValueError(f"window {text[:40]!r}: width must be > 0")
    if function == "LINEAR" and width < 1:
        raise ValueError("a linear window has a width of at least 1 (PS3.3 C.11.2.1.2.1)")
    return Window(center, width, function)


@dataclass(frozen=True, slots=True)
class Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3): output size and source region.

    ``region`` is ``(sx, sy, sw, sh)`` with ``None`` for an omitted value (0 for the
    origin, the rest of the image for the size); a negative ``sw``/``sh`` flips.
    """

    width: int
    height: int
    region: tuple[int | None, int | None, int | None, int | None] | None = None


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


def parse_viewport(text: str) -> Viewport:
    """``vw,vh`` or ``vw,vh,sx,sy,sw,sh``; raise ValueError when it is neither."""
    values = [v.strip() for v in text.split(",")]
    if len(values) not in (2, 6):
        raise ValueError(f"viewport {text[:40]!r}: expected vw,vh[,sx,sy,sw,sh]")
    width, height = int(values[0]), int(values[1])
    if not (0 < width <= 8192 and 0 < height <= 8192):
        raise ValueError(f"viewport {width}x{height}: each side must be 1 to 8192")
    if len(values) == 2:
        return Viewport(width, height)
    sx, sy, sw, sh = (_optional_int(v) for v in values[2:])
    if (sx is not None and sx < 0) or (sy is not None and sy < 0) or sw == 0 or sh == 0:
        raise ValueError(f"viewport {text[:40]!r}: sx, sy >= 0 and sw, sh not 0")
    return Viewport(width, height, (sx, sy, sw, sh))


def _frame_item(ds: Dataset, index: int, sequence: str, keyword: str) -> Dataset | None:
    """The ``sequence`` item of frame ``index`` (per-frame, then shared functional groups)."""
    for groups, position in (("PerFrameFunctionalGroupsSequence", index), ("Shared", 0)):
        name = groups if groups != "Shared" else "SharedFunctionalGroupsSequence"
        items = ds.get(name)
        if not items or position >= len(items):
            continue
        inner = items[position].get(sequence)
        if inner and keyword in inner[0]:
            return inner[0]  # type: ignore[no-any-return]
    return None


def _first(value: Any) -> float:
    """The first value of a DS/IS that may be multi-valued."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _rescaled(arr: Array, ds: Dataset, index: int) -> Array:
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    source = (
        ds
        if "RescaleSlope" in ds
        else _frame_item(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
    )
    values = arr.astype(np.float64)
    if source is None:
        return values
    slope = _first(source.get("RescaleSlope", 1) or 1)
    intercept = _first(source.get("RescaleIntercept", 0) or 0)
    return values * slope + intercept


def _stored_window(ds: Dataset, index: int) -> Window | None:
    source = (
        ds
        if "WindowCenter" in ds
        else _frame_item(ds, index, "FrameVOILUTSequence", "WindowCenter")
    )
    if source is None or "WindowWidth" not in source:
        return None
    try:
        center, width = _first(source.WindowCenter), _first(source.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if width <= 0 or (function == "LINEAR" and width < 1):
        return None
    return Window(center, width, function if function in FUNCTIONS.values() else "LINEAR")


def apply_window(values: Array, window: Window) -> Array:
    """Map to 0..1 with the VOI LUT function of PS3.3 C.11.2.1.2 / C.11.2.1.3."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (values - c) / w)))
    if window.function == "LINEAR_EXACT":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0)
    if w <= 1:
        return (values > c - 0.5).astype(np.float64)
    return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def _span(values: Array) -> Array:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _grayscale(arr: Array, ds: Dataset, index: int, window: Window | None) -> Array:
    values = _rescaled(arr, ds, index)
    window = window or _stored_window(ds, index)
    if window is not None:
        unit = apply_window(values, window)
    elif "VOILUTSequence" in ds:
        unit = _span(np.asarray(apply_voi_lut(values, ds), dtype=np.float64))
    else:
        unit = _span(values)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        unit = 1.0 - unit
    return np.asarray(np.round(unit * 255.0), dtype=np.uint8)


def _to_8bit(arr: Array, bits: int) -> Array:
    if arr.dtype == np.uint8 or bits <= 8:
        return arr.astype(np.uint8)
    return np.asarray(np.clip(arr.astype(np.float64) / ((1 << bits) - 1) * 255.0, 0, 255)).astype(
        np.uint8
    )


def _colour(arr: Array, ds: Dataset) -> Array:
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(arr, ds))
        return _to_8bit(rgb, 16 if rgb.dtype != np.uint8 else 8)
    return _to_8bit(arr, int(ds.get("BitsStored", 8) or 8))


def frame_image(pixels: StoredPixels, index: int, window: Window | None) -> Image.Image:
    """Frame ``index`` (0-based) rendered to an 8-bit grayscale or RGB Pillow image."""
    ds = pixels.header
    arr = decode_frame(pixels, index)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR" or arr.ndim == 3:
        return Image.fromarray(_colour(arr, ds), mode="RGB")
    return Image.fromarray(_grayscale(arr, ds, index, window), mode="L")


def _axis(image_size: int, start: int | None, size: int | None) -> tuple[int, int, bool]:
    """(first, last exclusive, flipped) of one axis of the source region."""
    first = min(start or 0, image_size - 1)
    if size is None:
        return first, image_size, False
    if size > 0:
        return first, min(image_size, first + size), False
    last = min(start, image_size) if start is not None else image_size  # [sx + sw, sx)
    return max(0, last + size), last, True


def crop(image: Image.Image, region: tuple[int | None, ...]) -> Image.Image:
    """The source region ``(sx, sy, sw, sh)`` of ``image``, flipped where sw/sh < 0."""
    left, right, flip_x = _axis(image.width, region[0], region[2])
    top, bottom, flip_y = _axis(image.height, region[1], region[3])
    image = image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
    if flip_x:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip_y:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


def fit(image: Image.Image, viewport: Viewport) -> Image.Image:
    """Crop to the source region, then scale to fit the viewport, aspect ratio kept."""
    if viewport.region is not None:
        image = crop(image, viewport.region)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def render_frame(pixels: StoredPixels, index: int, options: RenderOptions) -> bytes:
    """Frame ``index`` (0-based) encoded as ``options.media_type``."""
    image = frame_image(pixels, index, options.window)
    if options.viewport is not None:
        image = fit(image, options.viewport)
    buffer = io.BytesIO()
    pil_format = PIL_FORMATS[options.media_type]
    if pil_format == "JPEG":
        image.save(buffer, format="JPEG", quality=options.quality)
    else:
        image.save(buffer, format=pil_format)
    return buffer.getvalue()
