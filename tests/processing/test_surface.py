"""Isosurfaces: watertight phantom meshes, CT bounding box, STL/OBJ export."""

from __future__ import annotations

import numpy as np
import pytest

from tests.processing.helpers import CT, files, sphere, synthetic
from workers.processing import ProcessingError, assemble_volume, is_watertight, isosurface
from workers.processing.surface import Mesh, obj_bytes, read_stl, stl_bytes


def enclosed_volume(mesh: Mesh) -> float:
    """Signed volume (divergence theorem): positive when the normals point outward."""
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6)


@pytest.mark.parametrize("orientation", ["axial", "sagittal"])
def test_sphere_mesh_is_watertight_outward_and_the_right_size(orientation) -> None:  # type: ignore[no-untyped-def]
    volume = synthetic(sphere(), spacing=(2.0, 1.0, 1.0), orientation=orientation)
    mesh = isosurface(volume, 0.0)
    assert is_watertight(mesh)
    # a 12-voxel radius: 24 mm along the slices, 12 mm in-plane (an ellipsoid in mm)
    expected = 4 / 3 * np.pi * 24 * 12 * 12
    assert enclosed_volume(mesh) == pytest.approx(expected, rel=0.05)
    centre = (volume.affine @ [20, 20, 20, 1])[:3]
    low, high = mesh.bounds()
    extent = np.abs(volume.affine[:3, :3] @ [12.0, 12.0, 12.0])
    np.testing.assert_allclose(low, centre - extent, atol=2.1)
    np.testing.assert_allclose(high, centre + extent, atol=2.1)


def test_object_cut_by_the_volume_border_still_gives_a_closed_mesh() -> None:
    volume = synthetic(sphere(centre=(2.0, 20.0, 20.0)))
    mesh = isosurface(volume, 0.0)
    assert is_watertight(mesh)
    assert mesh.bounds()[0][2] == pytest.approx(volume.affine[2, 3])  # capped on the border


def test_ct_bone_mesh_lies_within_the_volume_extent() -> None:
    volume = assemble_volume(files(CT))
    mesh = isosurface(volume, 300.0)
    assert len(mesh.faces) > 10_000
    assert is_watertight(mesh)
    corners = volume.corners()
    low, high = mesh.bounds()
    assert np.all(low >= corners.min(axis=0) - 1e-3)
    assert np.all(high <= corners.max(axis=0) + 1e-3)


def test_open_mesh_is_not_watertight() -> None:
    mesh = isosurface(synthetic(sphere()), 0.0)
    mesh.faces = mesh.faces[1:]
    assert not is_watertight(mesh)


def test_stl_and_obj_export() -> None:
    mesh = isosurface(synthetic(sphere(radius=6.0)), 0.0)
    data = stl_bytes(mesh)
    assert len(data) == 84 + 50 * len(mesh.faces)
    back = read_stl(data)
    np.testing.assert_allclose(back.vertices, mesh.vertices[mesh.faces].reshape(-1, 3))
    normals = read_stl(data).face_normals()
    np.testing.assert_allclose(normals, mesh.face_normals(), atol=1e-5)
    text = obj_bytes(mesh).decode()
    assert text.count("\nv ") == len(mesh.vertices)
    assert text.count("\nf ") == len(mesh.faces)


def test_threshold_outside_the_values_is_refused() -> None:
    with pytest.raises(ProcessingError, match="outside the volume's values"):
        isosurface(synthetic(sphere()), 5000.0)


@pytest.mark.parametrize("chunk", [2, 7, 16])
def test_chunked_marching_cubes_gives_the_same_closed_mesh(chunk) -> None:  # type: ignore[no-untyped-def]
    volume = synthetic(sphere(centre=(20.0, 20.0, 3.0)), spacing=(2.0, 1.0, 1.0))
    whole = isosurface(volume, 0.0, chunk_slices=1000)
    chunked = isosurface(volume, 0.0, chunk_slices=chunk)
    assert is_watertight(chunked)
    assert len(chunked.faces) == len(whole.faces)
    assert len(chunked.vertices) == len(whole.vertices)
    assert enclosed_volume(chunked) == pytest.approx(enclosed_volume(whole), rel=1e-6)


def test_step_size_gives_a_coarser_closed_mesh() -> None:
    volume = synthetic(sphere())
    fine, coarse = isosurface(volume, 0.0), isosurface(volume, 0.0, step_size=2)
    assert is_watertight(coarse) and len(coarse.faces) < len(fine.faces) / 3
    assert enclosed_volume(coarse) == pytest.approx(enclosed_volume(fine), rel=0.1)
