"""Intensity normalisation shared by training and inference.

MRI intensities have no absolute unit (uint8 0-255, float 0-100, int16 0-4000 are all common),
so every learned method works on ``volume / scale`` where ``scale`` is a robust high percentile of
the *LQ input's* foreground, and multiplies its output back by the same scale.  Training applies
the scale computed on the simulated LQ to both LQ and HQ, so a model sees at inference exactly
what it saw in training.
"""
from __future__ import annotations

import numpy as np

PERCENTILE = 99.0


def intensity_scale(array: np.ndarray) -> float:
    """99th percentile of the voxels above 5% of the maximum (background excluded); 1 if empty."""
    a = np.asarray(array, dtype=np.float32).reshape(-1)
    if a.size > 4_000_000:
        a = a[:: a.size // 4_000_000 + 1]
    top = float(a.max()) if a.size else 0.0
    if not np.isfinite(top) or top <= 0:
        return 1.0
    fg = a[a > 0.05 * top]
    scale = float(np.percentile(fg, PERCENTILE)) if fg.size else top
    return scale if scale > 0 else 1.0


def to_canonical(array: np.ndarray, array_axis: int) -> np.ndarray:
    """Move the thick axis to the front: every learned method works on [thick, a, b] arrays."""
    return np.moveaxis(array, array_axis, 0)


def from_canonical(array: np.ndarray, array_axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, 0, array_axis))
