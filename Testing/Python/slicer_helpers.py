"""Helpers for the test_slicer_* tests: MRML scenes and input nodes built with MRML's own setters
(SetSpacing / SetOrigin / SetIJKToRASDirections), independently of the glue under test."""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) gives the MRML scene")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("this 'slicer' module has no vtkMRMLScene", allow_module_level=True)

import slicer.util  # noqa: E402

from IQTEnhanceLib.volume import Volume  # noqa: E402


def rotation(ax_deg, ay_deg, az_deg) -> np.ndarray:
    ax, ay, az = np.radians([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# RAS direction matrices (columns = I, J, K axes) of the two geometries every test runs on.
AXIS_ALIGNED_RAS = np.diag([-1.0, -1.0, 1.0])          # LPS identity, as a NIfTI read by ITK
OBLIQUE_RAS = rotation(17.0, -28.0, 41.0)               # a tilted acquisition


def scene():
    return slicer.vtkMRMLScene()


def node_ids(s) -> list:
    return [s.GetNthNode(i).GetID() for i in range(s.GetNumberOfNodes())]


def add_scalar_node(s, array_kji: np.ndarray, spacing, origin_ras, directions_ras, name="T1",
                    window_level=None, class_name="vtkMRMLScalarVolumeNode"):
    """A volume node made with MRML's setters; optional display node with a fixed window/level."""
    node = s.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
    node.SetSpacing(*[float(x) for x in spacing])
    node.SetOrigin(*[float(x) for x in origin_ras])
    node.SetIJKToRASDirections([[float(directions_ras[r][c]) for c in range(3)] for r in range(3)])
    if window_level is not None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(*window_level)
    return node


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def ras_bounds(node) -> np.ndarray:
    """Bounds of the voxel *boxes* (corners at index -0.5 and n-0.5) in RAS: the physical extent."""
    m = ijk_to_ras(node)
    dims = node.GetImageData().GetDimensions()
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, dims[0] - 0.5) for j in (-0.5, dims[1] - 0.5)
                        for k in (-0.5, dims[2] - 0.5)])
    ras = (m @ corners.T).T[:, :3]
    return np.stack([ras.min(0), ras.max(0)])


def slab_average(volume: Volume, factor: int = 4) -> Volume:
    """A thick-slice LQ volume: the mean of each slab of ``factor`` slices along K (numpy axis 0),
    on the LQ grid of :mod:`IQTEnhanceLib.grid`."""
    from IQTEnhanceLib.grid import lq_geometry

    g = lq_geometry(volume, factor, "k")
    m = g["shape"][0]
    array = volume.array[: m * factor].reshape((m, factor) + volume.array.shape[1:]).mean(axis=1)
    return Volume(array.astype(np.float32), g["spacing"], g["origin"], g["direction"])


def add_lq_node(s, colin_volume: Volume, directions_ras, name="T1", window_level=(600.0, 350.0),
                dtype=np.int16, origin_ras=(12.5, -7.25, 30.0)):
    """The Colin27 crop as a thick-slice (×4 along K) int16 input node with the given orientation."""
    lq = slab_average(colin_volume)
    return add_scalar_node(s, np.round(lq.array).astype(dtype), lq.spacing, origin_ras, directions_ras,
                           name=name, window_level=window_level)
