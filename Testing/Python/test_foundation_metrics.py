"""Metrics against scikit-image's reference implementations, and evaluation over the physical overlap."""
import math

import numpy as np
import pytest
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.metrics import evaluate, evaluate_arrays, nrmse, psnr, ssim
from IQTEnhanceLib.volume import Volume


def skimage_metrics(output, reference, mask):
    reference = reference.astype(np.float64)
    output = output.astype(np.float64)
    data_range = float(reference[mask].max() - reference[mask].min())
    _, full = structural_similarity(reference, output, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=data_range, full=True)
    return {
        "nrmse": normalized_root_mse(reference[mask], output[mask], normalization="mean"),
        "psnr": peak_signal_noise_ratio(reference[mask], output[mask], data_range=data_range),
        "ssim": float(full[mask].mean()),
    }


@pytest.fixture
def cases(colin, rng):
    ref = colin[0].array[:32, :40, :36].astype(np.float64)
    mask = np.zeros(ref.shape, bool)
    mask[4:28, 6:34, 5:30] = True
    noisy = ref + rng.normal(0, 40, ref.shape)
    blurred = np.asarray(__import__("scipy.ndimage", fromlist=["x"]).gaussian_filter(ref, 1.2))
    scaled = 0.9 * ref + 25
    return ref, mask, {"noisy": noisy, "blurred": blurred, "scaled": scaled}


def test_metrics_agree_with_scikit_image(cases):
    ref, mask, outputs = cases
    for name, out in outputs.items():
        ours = evaluate_arrays(out, ref, mask)
        theirs = skimage_metrics(out, ref, mask)
        for key in ("nrmse", "psnr", "ssim"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12), (name, key)
        assert ours["voxels"] == int(mask.sum())
    # no mask: the whole image
    whole = np.ones(ref.shape, bool)
    assert ssim(outputs["noisy"], ref) == pytest.approx(skimage_metrics(outputs["noisy"], ref, whole)["ssim"], rel=1e-9)


def test_identical_images_are_perfect(cases):
    ref, mask, _ = cases
    assert nrmse(ref, ref, mask) == 0.0
    assert psnr(ref, ref, mask) == math.inf
    assert ssim(ref, ref, mask) == pytest.approx(1.0, abs=1e-12)


def test_worse_output_scores_worse(cases):
    ref, mask, outputs = cases
    small = evaluate_arrays(ref + 0.3 * (outputs["noisy"] - ref), ref, mask)
    large = evaluate_arrays(outputs["noisy"], ref, mask)
    assert small["nrmse"] < large["nrmse"] and small["psnr"] > large["psnr"] and small["ssim"] > large["ssim"]


def test_evaluation_over_the_physical_overlap(colin):
    hq, _ = colin
    direction = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]])
    ref = Volume(hq.array, (1.0, 1.2, 0.9), (5.0, 6.0, 7.0), direction)
    out_array = hq.array + 10.0
    # an output with fewer slices (the slice count was not a multiple of the factor)
    short = Volume(out_array[:44], ref.spacing, ref.origin, ref.direction)
    result = evaluate(short, ref)
    expected = evaluate_arrays(out_array[:44], hq.array[:44], hq.array[:44] != 0)
    for key in ("nrmse", "psnr", "ssim"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12)
    assert result["overlap_shape"] == [44, 72, 64]
    # an output starting 3 slices further along k (origin moved by 3 voxels along direction[:, 2])
    moved = Volume(out_array[3:40], ref.spacing, ref.physical_point([0, 0, 3]), ref.direction)
    mask = ref.with_array((hq.array > 500).astype(np.uint8))
    result = evaluate(moved, ref, mask)
    expected = evaluate_arrays(out_array[3:40], hq.array[3:40], hq.array[3:40] > 500)
    assert result["nrmse"] == pytest.approx(expected["nrmse"], rel=1e-12)
    # grids that do not share grid lines or spacing are an error
    half = Volume(out_array, ref.spacing, ref.physical_point([0, 0, 0.5]), ref.direction)
    with pytest.raises(InputError, match="fraction of a voxel"):
        evaluate(half, ref)
    coarse = Volume(out_array, (1.0, 1.2, 1.8), ref.origin, ref.direction)
    with pytest.raises(InputError, match="does not match"):
        evaluate(coarse, ref)
    with pytest.raises(InputError, match="empty"):
        evaluate(short, ref, ref.with_array(np.zeros(hq.shape, np.uint8)))
