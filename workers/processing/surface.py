"""Isosurfaces: marching cubes at a threshold → triangle mesh in patient mm; STL and OBJ.

The volume is padded with one voxel below the threshold on every side, so the surface of
an object touching the volume's border is closed too (a watertight mesh). Faces are wound
so their normals point out of the object in patient space (reversed when the affine
mirrors, as for a left-handed slice order).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.measure import marching_cubes

from workers.processing.errors import ProcessingError
from workers.processing.monitor import SILENT, Monitor
from workers.processing.volume import Volume

STL_TRIANGLE = np.dtype(
    [("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")]
)


@dataclass
class Mesh:
    """Vertices (n, 3) in patient LPS mm and triangles (m, 3) indexing them."""

    vertices: np.ndarray[Any, np.dtype[np.float32]]
    faces: np.ndarray[Any, np.dtype[np.signedinteger[Any]]]
    threshold: float
    description: str

    def bounds(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """(minimum, maximum) corner of the axis-aligned bounding box, mm."""
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def face_normals(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Unit normal of every triangle (zero for degenerate ones)."""
        tri = self.vertices[self.faces]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        unit: np.ndarray[Any, np.dtype[np.float32]] = np.divide(
            normals, length, out=np.zeros_like(normals), where=length > 0
        )
        return unit


def isosurface(
    volume: Volume,
    threshold: float,
    step_size: int = 1,
    monitor: Monitor = SILENT,
    chunk_slices: int = 128,
) -> Mesh:
    """The surface where the volume crosses ``threshold`` (e.g. 300 HU for bone).

    ``step_size`` > 1 samples every n-th voxel (a coarser, smaller mesh). The volume is
    processed ``chunk_slices`` slices at a time (one slice shared between neighbours), so
    the extra memory is one padded chunk, not a padded copy of the whole volume; vertices
    on the shared slices are computed identically on both sides and merged.
    """
    voxels = volume.voxels[::step_size, ::step_size, ::step_size]
    low, high = float(voxels.min()), float(voxels.max())
    if not low < threshold < high:
        raise ProcessingError(
            f"threshold {threshold:g} is outside the volume's values ({low:g} to {high:g}); "
            "no surface there"
        )
    if voxels.shape[0] < 2:
        raise ProcessingError(f"{voxels.shape[0]} slice(s) after step {step_size}; need 2")
    level = _level(voxels, threshold)
    count = voxels.shape[0]
    starts = list(range(0, count - 1, max(chunk_slices, 2) - 1))
    pieces: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
    offset = 0
    for number, start in enumerate(starts):
        monitor.report(0.9 * number / len(starts), "marching cubes")
        stop = min(start + max(chunk_slices, 2), count)
        before, after = int(start == 0), int(stop == count)
        chunk = np.pad(voxels[start:stop], ((before, after), (1, 1), (1, 1)), constant_values=low)
        if not chunk.min() < level < chunk.max():
            continue
        vertices, faces, _, _ = marching_cubes(chunk, level=level)  # type: ignore[no-untyped-call]
        vertices += np.array([start - before, -1.0, -1.0], dtype=np.float32)
        pieces.append((vertices, faces + offset))
        del chunk
        offset += len(vertices)
    vertices, faces = _stitch(pieces, [float(s) for s in starts[1:]])
    upper = np.array(voxels.shape, dtype=np.float32) - 1
    np.clip(vertices, 0, upper, out=vertices)  # caps on the border
    # float32 throughout: 1e-4 mm at 1 m from the origin, half the memory of float64
    vertices *= np.float32(step_size)
    vertices = vertices @ volume.affine[:3, :3].T.astype(np.float32)
    vertices += volume.affine[:3, 3].astype(np.float32)
    if np.linalg.det(volume.affine[:3, :3]) > 0:
        faces = faces[:, ::-1]  # skimage winds for index space; keep normals outward
    faces = faces.astype(np.int32 if len(vertices) < 2**31 else np.int64)
    monitor.report(1.0, "marching cubes")
    return Mesh(vertices, faces, threshold, f"isosurface {threshold:g}")


def _stitch(
    pieces: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]], seams: list[float]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Concatenate chunk meshes, merging the vertices that lie on a shared slice."""
    if not pieces:
        return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.int64)
    vertices = np.concatenate([v for v, _ in pieces])
    faces = np.concatenate([f for _, f in pieces])
    pieces.clear()
    on_seam = np.flatnonzero(np.isin(vertices[:, 0], seams))
    if len(on_seam) == 0:
        return vertices, faces
    _, first, inverse = np.unique(vertices[on_seam], axis=0, return_index=True, return_inverse=True)
    mapping = np.arange(len(vertices))
    mapping[on_seam] = on_seam[first][inverse.reshape(-1)]
    faces = mapping[faces]
    del mapping
    used = np.zeros(len(vertices), dtype=bool)
    used[faces] = True  # drop the merged duplicates: renumber without sorting
    renumber = np.cumsum(used) - 1
    return vertices[used], renumber[faces]


def _level(voxels: np.ndarray[Any, Any], threshold: float) -> float:
    """The marching-cubes level separating voxels >= threshold from those below.

    Voxels exactly at the level give vertices on grid points, which marching cubes
    duplicates (open edges); so when some voxel equals the threshold, the level is set
    half-way to the next lower value present (299.5 for 300 on integer HU). Scanned a
    slice at a time (no volume-sized temporary).
    """
    target = np.float32(threshold)
    if not any(np.any(plane == target) for plane in voxels):
        return threshold
    below = max(float(np.max(p, where=p < threshold, initial=-np.inf)) for p in voxels)
    return (threshold + below) / 2


def is_watertight(mesh: Mesh) -> bool:
    """Every edge is shared by exactly two triangles, in opposite directions (closed, oriented)."""
    if len(mesh.faces) == 0:
        return False
    faces = mesh.faces.astype(np.int64)
    tails = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    heads = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    size = np.int64(len(mesh.vertices))
    forward = np.sort(tails * size + heads)
    backward = np.sort(heads * size + tails)
    # closed and consistently oriented: each directed edge once, and its reverse present
    return bool(np.all(np.diff(forward) > 0) and np.array_equal(forward, backward))


def stl_bytes(mesh: Mesh, name: str = "PACS Hub isosurface") -> bytes:
    """The mesh as binary STL (80-byte header, triangle count, 50 bytes per triangle)."""
    triangles = np.zeros(len(mesh.faces), dtype=STL_TRIANGLE)
    triangles["normal"] = mesh.face_normals()
    triangles["vertices"] = mesh.vertices[mesh.faces]
    header = name.encode("ascii", "replace")[:80].ljust(80, b" ")
    count = np.uint32(len(mesh.faces)).tobytes()
    return header + count + triangles.tobytes()


def read_stl(data: bytes) -> Mesh:
    """Triangles of a binary STL (vertices not shared), for checks and round trips."""
    count = int(np.frombuffer(data, "<u4", 1, 80)[0])
    if len(data) != 84 + count * STL_TRIANGLE.itemsize:
        raise ProcessingError(f"STL of {len(data)} bytes, expected {84 + 50 * count}")
    triangles = np.frombuffer(data, STL_TRIANGLE, count, 84)
    vertices = triangles["vertices"].reshape(-1, 3).copy()
    faces = np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)
    return Mesh(vertices, faces, float("nan"), "read from STL")


def obj_bytes(mesh: Mesh) -> bytes:
    """The mesh as Wavefront OBJ text (units: mm, patient LPS)."""
    out = io.StringIO()
    out.write(f"# PACS Hub {mesh.description}, patient LPS millimetres\n")
    for rows, line in ((mesh.vertices, "v %.4f %.4f %.4f\n"), (mesh.faces + 1, "f %d %d %d\n")):
        for start in range(0, len(rows), 65536):  # one C-level % per chunk: fast
            chunk = rows[start : start + 65536]
            out.write((line * len(chunk)) % tuple(chunk.ravel().tolist()))
    return out.getvalue().encode("ascii")
