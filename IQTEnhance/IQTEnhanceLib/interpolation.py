"""Interpolation baselines: nearest, (tri)linear and cubic B-spline up-sampling onto the HQ grid.

Only the thick axis changes resolution, so each is a 1-D interpolation along that axis (the other
two axes keep their samples): "trilinear" on these grids equals linear interpolation along the
axis.  HQ index n sits at LQ continuous index u = (n - (f-1)/2) / f (see :mod:`.grid`); the half
LQ voxel beyond the first and last LQ centres is extrapolated as a constant (linear) or by
mirror boundary conditions (B-spline).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError
from .grid import check_factor, hq_volume_like
from .volume import Volume, array_axis

INTERPOLATION_METHODS = ("nearest", "trilinear", "bspline")


def _lq_coordinates(m: int, f: int) -> np.ndarray:
    n = np.arange(m * f, dtype=np.float64)
    return (n - (f - 1) / 2.0) / f


def upsample_array(array: np.ndarray, factor: int, axis: int, method: str = "trilinear") -> np.ndarray:
    """Up-sample ``array`` by ``factor`` along numpy axis ``axis``. Returns float32."""
    f = check_factor(factor)
    if method not in INTERPOLATION_METHODS:
        raise InputError(f"unknown interpolation {method!r}; choose one of {', '.join(INTERPOLATION_METHODS)}")
    data = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)
    m = data.shape[0]
    if method == "nearest" or m == 1:
        out = np.repeat(data, f, axis=0)
    elif method == "trilinear":
        u = np.clip(_lq_coordinates(m, f), 0, m - 1)
        i0 = np.minimum(np.floor(u).astype(int), m - 2)
        w = (u - i0).astype(np.float32)[:, None, None]
        out = data[i0] * (1 - w) + data[i0 + 1] * w
    else:
        coeff = ndimage.spline_filter1d(data, order=3, axis=0, mode="mirror", output=np.float32)
        u = _lq_coordinates(m, f)
        base = np.floor(u).astype(int)
        t = (u - base).astype(np.float32)
        weights = [(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6]
        out = np.zeros((m * f,) + data.shape[1:], dtype=np.float32)
        period = 2 * (m - 1) if m > 1 else 1
        for offset, w in zip((-1, 0, 1, 2), weights):
            idx = np.abs(base + offset) % period  # mirror about the first sample ...
            idx = np.where(idx > m - 1, period - idx, idx)  # ... and about the last
            out += coeff[idx] * w[:, None, None]
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def upsample(lq: Volume, factor: int, axis, method: str = "trilinear") -> Volume:
    """Interpolate an LQ volume onto its HQ grid (see :mod:`.grid` for the geometry)."""
    array = upsample_array(lq.array, factor, array_axis(axis), method)
    return hq_volume_like(lq, factor, axis, array)
