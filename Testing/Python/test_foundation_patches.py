"""Patch engine: aligned pairs, exact reassembly, weights, masks, progress/cancel, bounded memory."""
import tracemalloc

import numpy as np
import pytest

from IQTEnhanceLib.errors import CancelledError, InputError
from IQTEnhanceLib.patches import (PatchAccumulator, extract_pairs, extract_patches, gaussian_window,
                                   hq_patch_shape, hq_positions, patch_positions, reconstruct_patchwise,
                                   sample_positions)
from IQTEnhanceLib.simulate import SimulationParameters, degrade_array


def true_patch_predictor(hq, factor, axis, lq_patch):
    shape = hq_patch_shape(lq_patch, factor, axis)
    return lambda positions: extract_patches(hq, hq_positions(positions, factor, axis), shape)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_reassembling_true_patches_reproduces_the_volume(colin, axis):
    """Sizes not divisible by the patch size or the stride: the last patch sits flush with the end."""
    f = 3
    hq = colin[0].array[:45, :71, :61].astype(np.float32)  # 45 = 15 LQ slices x 3 along axis 0
    hq = np.ascontiguousarray(np.moveaxis(hq, 0, axis))
    lq_shape = list(hq.shape)
    lq_shape[axis] //= f
    lq_patch = [7, 6, 5]
    lq_patch[axis] = 4
    assert all(s % p for s, p in zip(lq_shape, lq_patch))  # nothing divides evenly
    predict = true_patch_predictor(hq, f, axis, lq_patch)
    plain = reconstruct_patchwise(lq_shape, f, axis, lq_patch, (3, 4, 2), predict, batch_size=37)
    np.testing.assert_allclose(plain, hq, rtol=1e-6, atol=1e-6 * float(hq.max()))
    window = gaussian_window(hq_patch_shape(lq_patch, f, axis))
    weighted = reconstruct_patchwise(lq_shape, f, axis, lq_patch, 2, predict, batch_size=100, weights=window)
    np.testing.assert_allclose(weighted, hq, rtol=1e-6, atol=1e-6 * float(hq.max()))


def test_per_patch_weights_and_accumulator_against_a_loop(rng):
    shape, patch, n = (30, 20, 25), (6, 4, 5), 2500
    positions = np.stack([rng.integers(0, s - p + 1, n) for s, p in zip(shape, patch)], axis=1)
    patches = rng.normal(size=(n,) + patch).astype(np.float32)
    weights = (rng.random((n,) + patch) + 0.1).astype(np.float32)
    acc = PatchAccumulator(shape)
    acc.CHUNK = 300  # several chunks, unsorted corners
    acc.add(positions, patches, weights)
    total, weight = np.zeros(shape), np.zeros(shape)
    for (a, b, c), p, w in zip(positions, patches, weights):
        total[a:a + 6, b:b + 4, c:c + 5] += p * w
        weight[a:a + 6, b:b + 4, c:c + 5] += w
    np.testing.assert_allclose(acc.weight, weight, rtol=1e-5)
    np.testing.assert_allclose(acc.total, total, rtol=1e-4, atol=1e-4)
    covered = weight > 0
    np.testing.assert_allclose(acc.result()[covered], (total / np.where(covered, weight, 1))[covered],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        acc.add(np.array([[28, 0, 0]]), patches[:1])  # falls outside


def test_mask_skips_patches_and_fills_the_rest(colin):
    f = 4
    hq = colin[0].array[:48, :40, :40].astype(np.float32)
    lq_shape = (12, 40, 40)
    mask = np.zeros(lq_shape, bool)
    mask[3:7, 10:20, 12:30] = True
    lq_patch, stride = (2, 5, 5), (1, 3, 3)
    all_positions = patch_positions(lq_shape, lq_patch, stride)
    kept = patch_positions(lq_shape, lq_patch, stride, mask)
    assert 0 < len(kept) < len(all_positions) / 3
    asked = []
    predict = true_patch_predictor(hq, f, 0, lq_patch)
    out = reconstruct_patchwise(lq_shape, f, 0, lq_patch, stride, lambda p: (asked.append(len(p)), predict(p))[1],
                                mask=mask, fill=-1.0, batch_size=50)
    assert sum(asked) == len(kept)
    hq_mask = np.repeat(mask, f, axis=0)
    np.testing.assert_allclose(out[hq_mask], hq[hq_mask], rtol=1e-6)  # every masked voxel covered, exact
    covered = out != -1.0
    np.testing.assert_allclose(out[covered], hq[covered], rtol=1e-6)
    assert (~covered).sum() > 0.5 * out.size  # far from the mask: filled


def test_extract_pairs_are_aligned(colin):
    """With a box slice profile an LQ patch is exactly the slab mean of its HQ patch."""
    f = 4
    hq = colin[0].array.astype(np.float32)
    lq = degrade_array(hq, SimulationParameters(factor=f, axis="k", snr=None, profile="box"))
    positions = sample_positions(lq.shape, (2, 5, 5), 200, np.random.default_rng(0))
    lq_p, hq_p = extract_pairs(lq, hq, f, 0, (2, 5, 5), positions)
    assert lq_p.shape == (200, 2, 5, 5) and hq_p.shape == (200, 8, 5, 5)
    np.testing.assert_allclose(hq_p.reshape(200, 2, f, 5, 5).mean(axis=2), lq_p, rtol=1e-5, atol=1e-3)


def test_sample_positions_respect_the_mask_budget(rng):
    mask = np.zeros((20, 30, 30), bool)
    mask[5:15, 5:25, 5:25] = True
    patch = (2, 5, 5)
    pos = sample_positions(mask.shape, patch, 500, rng, mask, min_mask_fraction=0.5)
    assert pos.shape == (500, 3)
    fractions = extract_patches(mask.astype(np.float32), pos, patch).mean(axis=(1, 2, 3))
    assert fractions.min() >= 0.5
    with pytest.raises(InputError):
        sample_positions(mask.shape, patch, 10, rng, np.zeros_like(mask))


def test_progress_and_cancel():
    calls = []
    lq_shape, lq_patch = (10, 20, 20), (2, 4, 4)
    predict = lambda p: np.zeros((len(p), 4, 4, 4), np.float32)  # noqa: E731
    reconstruct_patchwise(lq_shape, 2, 0, lq_patch, 2, predict, batch_size=10,
                          progress=lambda f, m: calls.append(f))
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls)
    batches = []

    def counting(p):
        batches.append(len(p))
        return predict(p)

    with pytest.raises(CancelledError):
        reconstruct_patchwise(lq_shape, 2, 0, lq_patch, 2, counting, batch_size=10,
                              cancel=lambda: len(batches) >= 2)
    assert len(batches) == 2  # stopped between batches


def test_peak_memory_of_a_256_cubed_reconstruction_is_bounded():
    """The issue's target: < 2 GB for a 256³ output. Large patches keep this test cheap; the memory
    is dominated by the accumulator (2 × output) plus one batch, whatever the patch size
    (Testing/benchmarks/bench_patch_engine.py measures it with realistic 2×5×5 patches)."""
    f, lq_shape, lq_patch = 4, (64, 256, 256), (4, 32, 32)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    out = reconstruct_patchwise(lq_shape, f, 0, lq_patch, (4, 32, 32),
                                lambda p: np.ones((len(p), 16, 32, 32), np.float32), batch_size=64)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert out.shape == (256, 256, 256) and float(out.min()) == 1.0
    assert peak < 2e9
    assert peak < 5 * out.nbytes  # accumulator (2x) + result + a batch, no hidden full-size copies
