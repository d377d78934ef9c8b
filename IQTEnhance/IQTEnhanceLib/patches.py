"""Patch engine: aligned LQ/HQ patch pairs for training, and memory-bounded patchwise
reconstruction by (optionally weighted) averaging of overlapping HQ predictions.

Positions are patch corners in array order [k, j, i].  An LQ patch of shape ``p`` at LQ corner
``c`` covers the HQ patch of shape ``p`` × f along the thick axis at HQ corner ``c`` × f along that
axis (see :mod:`.grid`: LQ slab m is HQ slices m*f … m*f+f-1), so pairs are exactly aligned.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .errors import InputError
from .progress import as_reporter


def _axis_positions(size: int, patch: int, stride: int) -> np.ndarray:
    """Corners along one axis covering [0, size): a regular grid plus a last corner flush with the end."""
    if patch > size:
        raise InputError(f"patch of {patch} voxels does not fit an axis of {size} voxels")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return np.asarray(starts, dtype=np.int64)


def patch_positions(shape, patch, stride, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Corners (n, 3) of patches that tile ``shape`` with ``stride`` (every voxel covered at least once).

    With ``mask`` (same shape, bool), only patches that contain at least one mask voxel are kept.
    """
    shape = tuple(int(s) for s in shape)
    patch = tuple(int(p) for p in patch)
    stride = tuple(int(s) for s in np.broadcast_to(stride, (3,)))
    if any(s < 1 for s in stride):
        raise InputError(f"stride must be >= 1 (got {stride})")
    axes = [_axis_positions(s, p, st) for s, p, st in zip(shape, patch, stride)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    if mask is not None:
        if mask.shape != shape:
            raise InputError(f"mask shape {mask.shape} differs from the volume shape {shape}")
        counts = window_sums(mask.astype(np.float32), patch)
        grid = grid[counts[grid[:, 0], grid[:, 1], grid[:, 2]] > 0.5]
    return grid


def window_sums(array: np.ndarray, patch) -> np.ndarray:
    """Sum of ``array`` over every window of shape ``patch`` (valid corners), via a summed-area table."""
    s = np.pad(np.asarray(array, dtype=np.float64), ((1, 0), (1, 0), (1, 0))).cumsum(0).cumsum(1).cumsum(2)
    a, b, c = patch
    return (s[a:, b:, c:] - s[:-a, b:, c:] - s[a:, :-b, c:] - s[a:, b:, :-c]
            + s[:-a, :-b, c:] + s[:-a, b:, :-c] + s[a:, :-b, :-c] - s[:-a, :-b, :-c])


def sample_positions(shape, patch, n: int, rng: np.random.Generator,
                     mask: Optional[np.ndarray] = None, min_mask_fraction: float = 0.5) -> np.ndarray:
    """``n`` random patch corners (with replacement) whose patch is at least ``min_mask_fraction``
    inside ``mask`` (any corner when no mask)."""
    shape = tuple(int(s) for s in shape)
    patch = tuple(int(p) for p in patch)
    valid_shape = tuple(s - p + 1 for s, p in zip(shape, patch))
    if any(v < 1 for v in valid_shape):
        raise InputError(f"patch {patch} does not fit the volume {shape}")
    if mask is None:
        return np.stack([rng.integers(0, v, size=n) for v in valid_shape], axis=1)
    frac = window_sums(mask.astype(np.float32), patch) / float(np.prod(patch))
    candidates = np.flatnonzero(frac >= min_mask_fraction - 1e-9)
    if candidates.size == 0:
        candidates = np.flatnonzero(frac > 0)
    if candidates.size == 0:
        raise InputError("the mask is empty: no patch can be sampled")
    chosen = candidates[rng.integers(0, candidates.size, size=n)]
    return np.stack(np.unravel_index(chosen, valid_shape), axis=1).astype(np.int64)


def extract_patches(array: np.ndarray, positions: np.ndarray, patch) -> np.ndarray:
    """Copy the patches of shape ``patch`` at ``positions`` (n, 3) out of ``array``: (n, *patch)."""
    windows = np.lib.stride_tricks.sliding_window_view(array, tuple(int(p) for p in patch))
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
    return np.ascontiguousarray(windows[positions[:, 0], positions[:, 1], positions[:, 2]])


def hq_positions(positions: np.ndarray, factor: int, array_axis: int) -> np.ndarray:
    """HQ corners of the HQ patches covered by LQ patches at ``positions``."""
    out = np.array(positions, dtype=np.int64, copy=True).reshape(-1, 3)
    out[:, array_axis] *= factor
    return out


def hq_patch_shape(lq_patch, factor: int, array_axis: int) -> tuple:
    shape = list(int(p) for p in lq_patch)
    shape[array_axis] *= factor
    return tuple(shape)


def extract_pairs(lq: np.ndarray, hq: np.ndarray, factor: int, array_axis: int, lq_patch,
                  positions: np.ndarray) -> tuple:
    """Aligned (LQ patches, HQ patches) at LQ ``positions``."""
    expected = list(lq.shape)
    expected[array_axis] *= factor
    if tuple(hq.shape) != tuple(expected):
        raise InputError(f"HQ shape {hq.shape} is not the LQ shape {lq.shape} × {factor} along axis {array_axis}")
    return (extract_patches(lq, positions, lq_patch),
            extract_patches(hq, hq_positions(positions, factor, array_axis),
                            hq_patch_shape(lq_patch, factor, array_axis)))


class PatchAccumulator:
    """Sums overlapping patch predictions (optionally weighted) and divides by the weight sum.

    Memory: two float32 arrays of the output shape (a 256³ output takes 128 MB).
    """

    def __init__(self, shape, dtype=np.float32):
        self.shape = tuple(int(s) for s in shape)
        self.total = np.zeros(self.shape, dtype=dtype)
        self.weight = np.zeros(self.shape, dtype=dtype)

    def add(self, positions: np.ndarray, patches: np.ndarray, weights: Optional[np.ndarray] = None) -> None:
        """Add patches (n, *patch) at corners ``positions`` (n, 3); ``weights`` of shape ``patch`` (a
        blending window, same for all) or (n, *patch)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
        patches = np.asarray(patches)
        patch = tuple(patches.shape[1:])
        if len(positions) != len(patches):
            raise ValueError(f"{len(positions)} positions for {len(patches)} patches")
        if len(positions) == 0:
            return
        if np.any(positions < 0) or np.any(positions + np.asarray(patch) > np.asarray(self.shape)):
            raise ValueError(f"a patch of shape {patch} at these positions falls outside the volume {self.shape}")
        w = None if weights is None else np.asarray(weights, dtype=np.float64)
        for start in range(0, len(positions), self.CHUNK):
            stop = start + self.CHUNK
            wn = None if w is None else (w if w.ndim == 3 else w[start:stop])
            self._add_chunk(positions[start:stop], patches[start:stop], wn)

    # Summing patch by patch in Python cost 32 µs a patch (2×5×5 LQ → 8×5×5 HQ patches, 2 cores):
    # 53 s for the 1.66 M patches of a whole Colin27 at stride 1. Scattering a chunk of patches with
    # one bincount over the chunk's bounding box (raster-ordered corners, as patch_positions makes
    # them, keep that box a few slices thick) is 3-6× faster (Testing/benchmarks/bench_patch_engine.py);
    # sums are float64 within a chunk.
    CHUNK = 8192

    def _add_chunk(self, positions, patches, w) -> None:
        patch = patches.shape[1:]
        lo = positions.min(axis=0)
        box = positions.max(axis=0) + np.asarray(patch) - lo
        rel = positions - lo
        base = (rel[:, 0] * box[1] + rel[:, 1]) * box[2] + rel[:, 2]
        oz, oy, ox = np.meshgrid(*(np.arange(p) for p in patch), indexing="ij")
        offsets = ((oz * box[1] + oy) * box[2] + ox).reshape(-1)
        index = (base[:, None] + offsets[None, :]).reshape(-1)
        values = patches.reshape(len(positions), -1)
        weight_values = None
        if w is not None:
            wv = np.broadcast_to(w, patches.shape).reshape(len(positions), -1)
            values = values * wv
            weight_values = wv.reshape(-1)
        size = int(np.prod(box))
        region = tuple(slice(int(a), int(a + b)) for a, b in zip(lo, box))
        self.total[region] += np.bincount(index, weights=values.reshape(-1), minlength=size).reshape(box)
        self.weight[region] += np.bincount(index, weights=weight_values, minlength=size).reshape(box)

    def covered(self) -> np.ndarray:
        return self.weight > 0

    def result(self, fill: Optional[np.ndarray] = None) -> np.ndarray:
        """The weighted average; voxels no patch covered take ``fill`` (an array or scalar) or 0."""
        covered = self.weight > 0
        out = np.zeros(self.shape, dtype=self.total.dtype)
        np.divide(self.total, self.weight, out=out, where=covered)
        if fill is not None:
            out = np.where(covered, out, np.asarray(fill, dtype=out.dtype))
        return out


def gaussian_window(shape, sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian blending window (sigma = ``sigma_scale`` × size per axis, as in nnU-Net
    and MONAI sliding-window inference), normalised to max 1 and floored so that edges still count."""
    w = np.ones((), dtype=np.float64)
    for size in shape:
        x = np.arange(size) - (size - 1) / 2.0
        sigma = max(sigma_scale * size, 0.5)
        w = np.multiply.outer(w, np.exp(-0.5 * (x / sigma) ** 2))
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


def reconstruct_patchwise(lq_shape, factor: int, array_axis: int, lq_patch, stride,
                          predict: Callable[[np.ndarray], np.ndarray], *, batch_size: int = 4096,
                          mask: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None,
                          fill: Optional[np.ndarray] = None, progress=None, cancel=None) -> np.ndarray:
    """Predict HQ patches batch by batch and average them on the HQ grid.

    ``predict(lq_positions)`` receives a batch of LQ corners (n, 3) and returns the HQ patches
    (n, *hq_patch).  Only ``batch_size`` patches exist at a time, so peak memory is the
    accumulator (2 × output) plus one batch.  ``progress``/``cancel`` are called between batches;
    a cancel raises :class:`~.errors.CancelledError`.  Voxels no patch covers (outside ``mask``)
    take ``fill``.
    """
    reporter = as_reporter(progress, cancel, stage="enhancing patches")
    lq_shape = tuple(int(s) for s in lq_shape)
    positions = patch_positions(lq_shape, lq_patch, stride, mask)
    hq_shape = list(lq_shape)
    hq_shape[array_axis] *= factor
    acc = PatchAccumulator(hq_shape)
    patch_hq = hq_patch_shape(lq_patch, factor, array_axis)
    total = len(positions)
    reporter(0.0, f"enhancing {total} patches", force=True)
    for start in range(0, total, batch_size):
        reporter.check_cancel()
        batch = positions[start:start + batch_size]
        predicted = np.asarray(predict(batch))
        if predicted.shape[1:] != patch_hq:
            raise ValueError(f"predict returned patches of shape {predicted.shape[1:]}, expected {patch_hq}")
        acc.add(hq_positions(batch, factor, array_axis), predicted, weights)
        done = min(start + batch_size, total)
        reporter(done / max(total, 1), f"enhanced {done}/{total} patches")
    reporter.check_cancel()
    return acc.result(fill)
