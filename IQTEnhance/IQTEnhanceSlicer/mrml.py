"""Volume nodes <-> engine volumes, with their geometry.

Frames.  The engine's :class:`~IQTEnhanceLib.volume.Volume` is in ITK's LPS frame with one unit
direction column per index axis (I, J, K) and the array indexed ``[k, j, i]``.  A Slicer volume node
keeps its voxels in a ``vtkImageData`` (also ``[k, j, i]`` when read through numpy) and its geometry
in the IJKToRAS matrix, so::

    IJKToRAS = diag(-1, -1, 1, 1) @ [[direction * spacing, origin], [0, 0, 0, 1]]   (LPS -> RAS)

which keeps oblique (non axis-aligned) matrices exactly: the tests round-trip them to 1e-6 mm.

Threading.  Slicer's MRML scene is not thread safe: every function here that reads or writes a
node must run on the main thread.  :func:`volume_from_node` therefore copies the voxels, so that
the worker thread never touches a node, and the output node is created only when the engine is done.

All functions take the scene (or a node) as an argument; nothing reads ``slicer.mrmlScene``.
"""
from __future__ import annotations

import numpy as np

from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse

# Volume node classes that hold something other than one scalar intensity per voxel; they derive
# from vtkMRMLScalarVolumeNode in MRML, so an isinstance check alone would let them through.
NON_INTENSITY_CLASSES = {
    "vtkMRMLLabelMapVolumeNode": "a label map (segmentation), not an intensity image",
    "vtkMRMLVectorVolumeNode": "a vector (multi-component, e.g. RGB or 4-D) volume",
    "vtkMRMLDiffusionWeightedVolumeNode": "a diffusion-weighted (4-D) volume",
    "vtkMRMLDiffusionTensorVolumeNode": "a diffusion tensor volume",
    "vtkMRMLMultiVolumeNode": "a multi-volume (4-D) node",
}


def _vtk_matrix_to_numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _numpy_to_vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


# -- geometry ---------------------------------------------------------------------------------
def ijk_to_ras(volume: Volume) -> np.ndarray:
    """4x4 IJKToRAS matrix of an engine volume."""
    return LPS_TO_RAS @ volume.ijk_to_lps()


def geometry_from_ijk_to_ras(matrix: np.ndarray) -> tuple:
    """(spacing, origin LPS, direction LPS columns) from a 4x4 IJKToRAS matrix."""
    lps = LPS_TO_RAS @ np.asarray(matrix, dtype=float)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"the volume's IJKToRAS matrix has a zero-length axis (spacing {spacing.tolist()})")
    return spacing, lps[:3, 3].copy(), axes / spacing[None, :]


def node_ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return _vtk_matrix_to_numpy(matrix)


# -- input ------------------------------------------------------------------------------------
def describe_node(node) -> str:
    name = node.GetName() if node is not None and node.GetName() else "the input"
    return f"volume '{name}'"


def check_volume_node(node) -> None:
    """One clear :class:`InputError` for a node the engine cannot take: none, not a volume, a label
    map, a vector/4-D or tensor volume, no voxels."""
    if node is None:
        raise InputError("no input volume selected")
    if not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"'{node.GetName()}' is a {node.GetClassName()}, not a volume")
    for class_name, what in NON_INTENSITY_CLASSES.items():
        if node.IsA(class_name):
            raise InputError(f"{describe_node(node)} is {what}; IQT enhances scalar intensity volumes")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{describe_node(node)} is a {node.GetClassName()}; IQT enhances scalar volumes")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{describe_node(node)} is empty (it has no voxels)")
    dims = image.GetDimensions()
    if min(dims) < 1 or int(np.prod(dims)) == 0:
        raise InputError(f"{describe_node(node)} is empty (dimensions {list(dims)})")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise InputError(
            f"{describe_node(node)} has {components} components per voxel (a vector, RGB or 4-D volume); "
            "IQT enhances scalar volumes: extract one component first"
        )


def volume_from_node(node) -> Volume:
    """A *copy* of the node's voxels with its geometry as an engine :class:`Volume` (LPS).

    Main thread only.  The copy is what lets the engine run in a worker thread while the user keeps
    working with the scene, and guarantees the input node is never modified.  The parent transform
    is not applied (the output node is placed under the same transform instead).
    """
    check_volume_node(node)
    from vtk.util.numpy_support import vtk_to_numpy

    image = node.GetImageData()
    dims = image.GetDimensions()  # (i, j, k)
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    spacing, origin, direction = geometry_from_ijk_to_ras(node_ijk_to_ras(node))
    return Volume(np.array(array, copy=True), spacing, origin, direction)


# -- output -----------------------------------------------------------------------------------
def set_node_from_volume(node, volume: Volume) -> None:
    """Write voxels and geometry of ``volume`` into ``node`` (main thread only)."""
    import slicer.util

    array = np.ascontiguousarray(volume.array)
    node.SetIJKToRASMatrix(_numpy_to_vtk_matrix(ijk_to_ras(volume)))
    slicer.util.updateVolumeFromArray(node, array)


def copy_display(source_node, target_node) -> None:
    """Show ``target_node`` like ``source_node``: same window/level, colour table, interpolation.

    The enhanced volume keeps the input's intensity scale (the engine restores it), so the input's
    window/level is the one the user already chose for this contrast.
    """
    source = source_node.GetDisplayNode() if source_node is not None else None
    target = target_node.GetDisplayNode()
    if source is None or target is None:
        return
    was = target.StartModify()
    try:
        target.SetAutoWindowLevel(False)
        target.SetWindowLevel(source.GetWindow(), source.GetLevel())
        if source.GetColorNodeID():
            target.SetAndObserveColorNodeID(source.GetColorNodeID())
        target.SetInterpolate(source.GetInterpolate())
    finally:
        target.EndModify(was)


def output_name(input_name: str, label: str, factor: int, suffix: str = "") -> str:
    """'T1 IQT-SRep x4', 'T1 Trilinear x4', 'T1 IQT-SRep x4 trust'."""
    base = f"{input_name or 'Volume'} {label} x{int(factor)}"
    return f"{base} {suffix}" if suffix else base


def create_volume_node(scene, volume: Volume, name: str, *, like=None, node=None,
                       color_node_id: str | None = None):
    """Put ``volume`` into ``node`` (or a new scalar volume node named ``name``) in ``scene``.

    The new node gets a display node with ``like``'s window/level and sits under ``like``'s parent
    transform, so it overlays the input in every view.  If anything fails, a node created here is
    removed again: the scene is left as it was.  Main thread only.
    """
    created = node is None
    if created:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    try:
        was = node.StartModify()
        try:
            set_node_from_volume(node, volume)
            if like is not None and like.GetScene() is scene:
                node.SetAndObserveTransformNodeID(like.GetTransformNodeID())
        finally:
            node.EndModify(was)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        if color_node_id and scene.GetNodeByID(color_node_id) is not None:
            node.GetDisplayNode().SetAndObserveColorNodeID(color_node_id)
        elif like is not None:
            copy_display(like, node)
    except Exception:
        if created:
            remove_node(scene, node)
        raise
    return node


def remove_node(scene, node) -> None:
    """Remove a node and the display/storage nodes it made (``RemoveNode`` keeps those)."""
    if node is None:
        return
    for i in range(node.GetNumberOfDisplayNodes() if node.IsA("vtkMRMLDisplayableNode") else 0):
        display = node.GetNthDisplayNode(i)
        if display is not None:
            scene.RemoveNode(display)
    if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is not None:
        scene.RemoveNode(node.GetStorageNode())
    scene.RemoveNode(node)


def node_in_scene(scene, node) -> bool:
    return node is not None and node.GetScene() is scene and scene.GetNodeByID(node.GetID()) is not None
