"""Geometry of the low-quality (thick-slice) grid and the high-quality grid it is enhanced onto.

Convention (used by the simulator, the interpolation baselines and every method): along the
thick axis, LQ voxel ``m`` is the slab made of HQ voxels ``m*f … m*f+f-1``, so its centre lies at
HQ index ``m*f + (f-1)/2``.  Hence

* LQ spacing = f × HQ spacing along the axis, the other two unchanged;
* LQ origin  = HQ origin + direction[:, axis] × HQ spacing × (f-1)/2  (no half-voxel shift);
* an LQ volume of M slices is enhanced onto M*f HQ slices covering exactly the same slabs.

An HQ volume whose slice count is not a multiple of f loses its last ``N mod f`` slices in the
simulated LQ (they do not make a whole slab).
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .volume import Volume, array_axis, axis_letter, ijk_index


def default_axis(volume: Volume) -> str:
    """The thick-slice axis: the IJK axis with the largest spacing (K on ties, the usual slice axis)."""
    spacing = volume.spacing
    best = max(range(3), key=lambda a: (round(float(spacing[a]), 6), a))
    return axis_letter(best)


def check_factor(factor) -> int:
    try:
        f = int(factor)
    except (TypeError, ValueError):
        raise InputError(f"the upsampling factor must be an integer >= 2 (got {factor!r})") from None
    if f != factor or f < 2:
        raise InputError(f"the upsampling factor must be an integer >= 2 (got {factor!r})")
    if f > 16:
        raise InputError(f"an upsampling factor of {f} is beyond what IQT can recover (at most 16)")
    return f


def lq_geometry(hq: Volume, factor: int, axis) -> dict:
    """Shape (array order), spacing, origin, direction of the LQ grid made from ``hq``."""
    f = check_factor(factor)
    a = ijk_index(axis)
    ax = array_axis(axis)
    n = hq.array.shape[ax]
    m = n // f
    if m < 1:
        raise InputError(
            f"the volume has {n} voxels along {axis_letter(a)}, fewer than the factor {f}: nothing to simulate"
        )
    shape = list(hq.array.shape)
    shape[ax] = m
    spacing = hq.spacing.copy()
    spacing[a] *= f
    origin = hq.origin + hq.direction[:, a] * hq.spacing[a] * (f - 1) / 2.0
    return {"shape": tuple(shape), "spacing": spacing, "origin": origin, "direction": hq.direction.copy()}


def hq_geometry(lq: Volume, factor: int, axis) -> dict:
    """Shape (array order), spacing, origin, direction of the HQ grid an LQ volume is enhanced onto."""
    f = check_factor(factor)
    a = ijk_index(axis)
    ax = array_axis(axis)
    shape = list(lq.array.shape)
    shape[ax] *= f
    spacing = lq.spacing.copy()
    spacing[a] /= f
    origin = lq.origin - lq.direction[:, a] * spacing[a] * (f - 1) / 2.0
    return {"shape": tuple(shape), "spacing": spacing, "origin": origin, "direction": lq.direction.copy()}


def hq_volume_like(lq: Volume, factor: int, axis, array: np.ndarray) -> Volume:
    """Wrap an HQ-grid array with the HQ geometry of ``lq``."""
    g = hq_geometry(lq, factor, axis)
    if tuple(array.shape) != tuple(g["shape"]):
        raise ValueError(f"HQ array shape {array.shape} differs from the HQ grid {g['shape']}")
    return Volume(array, g["spacing"], g["origin"], g["direction"])


def crop_to_whole_slabs(hq: Volume, factor: int, axis) -> Volume:
    """The part of ``hq`` that simulation turns into whole LQ slabs (drops the trailing N mod f slices)."""
    f = check_factor(factor)
    ax = array_axis(axis)
    m = hq.array.shape[ax] // f
    index = [slice(None)] * 3
    index[ax] = slice(0, m * f)
    return Volume(hq.array[tuple(index)], hq.spacing.copy(), hq.origin.copy(), hq.direction.copy())
