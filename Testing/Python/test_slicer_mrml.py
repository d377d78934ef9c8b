"""Volume node <-> engine volume on slicer-core's real MRML scene: geometry (LPS/RAS, oblique),
copies, rejection of nodes that are not scalar intensity volumes, window/level, atomic creation."""
import numpy as np
import pytest

from slicer_helpers import (AXIS_ALIGNED_RAS, OBLIQUE_RAS, add_scalar_node, ijk_to_ras, node_ids, scene,
                            slicer)

from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.volume import Volume
from IQTEnhanceSlicer import mrml

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("directions", [AXIS_ALIGNED_RAS, OBLIQUE_RAS], ids=["axis-aligned", "oblique"])
def test_volume_from_node_is_the_lps_geometry_of_the_node(directions, rng):
    s = scene()
    array = rng.normal(100, 20, size=(5, 6, 7)).astype(np.float32)  # [k, j, i]
    node = add_scalar_node(s, array, (0.8, 1.1, 4.5), (10.0, -20.0, 33.0), directions)

    volume = mrml.volume_from_node(node)

    assert volume.array.shape == (5, 6, 7) and volume.size_ijk == (7, 6, 5)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.spacing, [0.8, 1.1, 4.5], atol=1e-12)
    np.testing.assert_allclose(volume.origin, RAS_TO_LPS @ [10.0, -20.0, 33.0], atol=1e-12)
    np.testing.assert_allclose(volume.direction, RAS_TO_LPS @ directions, atol=1e-12)
    # voxel (i, j, k) = (6, 0, 4) at the same physical point in both frames
    ras = ijk_to_ras(node) @ [6, 0, 4, 1]
    np.testing.assert_allclose(RAS_TO_LPS @ ras[:3], volume.physical_point([6, 0, 4]), atol=1e-9)


def test_volume_from_node_copies_the_voxels():
    s = scene()
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    node = add_scalar_node(s, array, (1, 1, 1), (0, 0, 0), AXIS_ALIGNED_RAS)
    volume = mrml.volume_from_node(node)
    volume.array[...] = -1  # the engine never does this; the copy makes sure the node cannot change
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)


@pytest.mark.parametrize("directions", [AXIS_ALIGNED_RAS, OBLIQUE_RAS], ids=["axis-aligned", "oblique"])
def test_created_node_round_trips_geometry(directions, rng):
    s = scene()
    lps_dir = RAS_TO_LPS @ directions
    volume = Volume(rng.random((4, 5, 6)).astype(np.float32), [0.9, 1.2, 1.5], [-3.0, 4.0, 5.5], lps_dir)
    node = mrml.create_volume_node(s, volume, "x")
    back = mrml.volume_from_node(node)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-9)
    np.testing.assert_allclose(node.GetSpacing(), volume.spacing, atol=1e-9)


def test_output_node_takes_window_level_colour_and_transform_of_the_input():
    s = scene()
    src = add_scalar_node(s, np.ones((3, 4, 5), np.int16) * 7, (1, 1, 3), (0, 0, 0), AXIS_ALIGNED_RAS,
                          window_level=(321.0, 123.0))
    transform = s.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    src.SetAndObserveTransformNodeID(transform.GetID())
    src.GetDisplayNode().SetInterpolate(0)
    out = mrml.create_volume_node(s, Volume(np.zeros((3, 4, 5), np.float32), [1, 1, 1]), "out", like=src)
    display = out.GetDisplayNode()
    assert display is not None and not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == (321.0, 123.0)
    assert display.GetColorNodeID() == src.GetDisplayNode().GetColorNodeID()
    assert display.GetInterpolate() == 0
    assert out.GetTransformNodeID() == transform.GetID()


def test_output_names_follow_input_and_method():
    assert mrml.output_name("T1", "IQT-SRep", 4) == "T1 IQT-SRep x4"
    assert mrml.output_name("T1", "IQT-SRep", 4, "trust") == "T1 IQT-SRep x4 trust"
    s = scene()
    a = mrml.create_volume_node(s, Volume(np.ones((2, 2, 2), np.float32), [1, 1, 1]), "T1 Trilinear x4")
    b = mrml.create_volume_node(s, Volume(np.ones((2, 2, 2), np.float32), [1, 1, 1]), "T1 Trilinear x4")
    assert a.GetName() == "T1 Trilinear x4" and b.GetName() != a.GetName()


def test_failed_node_creation_leaves_the_scene_as_it_was():
    s = scene()
    add_scalar_node(s, np.ones((2, 3, 4), np.float32), (1, 1, 1), (0, 0, 0), AXIS_ALIGNED_RAS)
    before = node_ids(s)
    # VTK refuses 64-bit integer voxels (slicer.util.updateVolumeFromArray raises): a real failure
    bad = Volume(np.ones((2, 3, 4), np.int64), [1, 1, 1])
    with pytest.raises(RuntimeError):
        mrml.create_volume_node(s, bad, "bad")
    assert node_ids(s) == before


def _label_map(s):
    return add_scalar_node(s, np.ones((3, 4, 5), np.int16), (1, 1, 1), (0, 0, 0), AXIS_ALIGNED_RAS,
                           class_name="vtkMRMLLabelMapVolumeNode", name="seg")


def _vector_node(s):
    node = s.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(node, np.ones((3, 4, 5, 3), np.uint8))
    return node


def _four_d_in_scalar_node(s):
    # a 4-D series (5 time points) read into a scalar node as a multi-component image
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    node = s.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fmri")
    image = vtk.vtkImageData()
    image.SetDimensions(5, 4, 3)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ones((3 * 4 * 5, 5), np.float32), deep=True))
    node.SetAndObserveImageData(image)
    return node


def _no_voxels(s):
    return s.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")


def _zero_size(s):
    import vtk

    node = s.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "zero")
    image = vtk.vtkImageData()
    image.SetDimensions(0, 0, 0)
    node.SetAndObserveImageData(image)
    return node


@pytest.mark.parametrize("make, words", [
    (_label_map, "label map"),
    (_vector_node, "vector"),
    (_four_d_in_scalar_node, "5 components"),
    (_no_voxels, "empty"),
    (_zero_size, "empty"),
    (lambda s: s.AddNewNodeByClass("vtkMRMLModelNode", "surface"), "not a volume"),
    (lambda s: None, "no input volume"),
], ids=["label-map", "vector", "4-D", "no-image-data", "zero-size", "model-node", "none"])
def test_nodes_that_are_not_scalar_intensity_volumes_are_refused_clearly(make, words):
    s = scene()
    node = make(s)
    with pytest.raises(InputError, match=words):
        mrml.volume_from_node(node)
