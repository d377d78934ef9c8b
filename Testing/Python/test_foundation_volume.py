"""Volumes: geometry through every file type, the [k, j, i] convention, atomic writes, input checks."""
import numpy as np
import pytest
import SimpleITK as sitk

from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.volume import Volume, array_axis, looks_like_label_map, read_volume, write_volume


def oblique_volume(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Volume(rng.random((7, 9, 11), dtype=np.float32), (0.8, 1.1, 3.0), (10.0, -20.5, 33.0), q)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_round_trip_keeps_geometry_and_leaves_no_temporary_files(tmp_path, rng, suffix):
    volume = oblique_volume(rng)
    path = write_volume(volume, tmp_path / f"v{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_array_order_is_k_j_i(tmp_path, rng):
    volume = oblique_volume(rng)
    image = volume.to_sitk()
    assert image.GetSize() == (11, 9, 7)  # (i, j, k)
    assert image.GetPixel(10, 2, 5) == pytest.approx(float(volume.array[5, 2, 10]))
    point = image.TransformIndexToPhysicalPoint((10, 2, 5))
    np.testing.assert_allclose(volume.physical_point([10, 2, 5]), point, atol=1e-9)
    assert array_axis("k") == 0 and array_axis("j") == 1 and array_axis("i") == 2


def test_input_checks(tmp_path, colin):
    assert not looks_like_label_map(colin[0])  # a real T1 is an intensity image
    t1 = write_volume(colin[0].with_array(colin[0].array.astype(np.int16)), tmp_path / "t1.nii.gz", dtype=None)
    assert read_volume(t1).array.dtype == np.int16  # an int16 scan is not mistaken for labels
    binary = write_volume(colin[0].with_array((colin[0].array > 500).astype(np.uint8)), tmp_path / "m.nii.gz",
                          dtype=np.uint8)
    with pytest.raises(InputError, match="label map"):
        read_volume(binary)
    assert read_volume(binary, allow_label_map=True).array.max() == 1
    single = write_volume(Volume(np.ones((1, 5, 6), np.float32), (1, 1, 3)), tmp_path / "one.nii.gz")
    with pytest.raises(InputError, match="single slice"):
        read_volume(single)
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "absent.nrrd")
    with pytest.raises(InputError, match="folder"):
        read_volume(tmp_path)
    with pytest.raises(InputError, match="unsupported"):
        write_volume(colin[0], tmp_path / "x.png")
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))])  # 4-D, one time point
    sitk.WriteImage(series, str(tmp_path / "t1_4d.nii.gz"))
    assert read_volume(tmp_path / "t1_4d.nii.gz").shape == (4, 5, 6)
