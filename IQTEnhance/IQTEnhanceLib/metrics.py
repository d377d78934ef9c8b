"""Image quality metrics inside a mask on the HQ grid: NRMSE, PSNR and 3-D SSIM.

Conventions (the IQT literature's):

* NRMSE = RMSE / mean(reference) over the mask (scikit-image's ``normalization="mean"``);
* PSNR = 20 log10(data_range / RMSE), ``data_range`` = max - min of the reference in the mask;
* SSIM = Wang et al. 2004 with a Gaussian window (σ = 1.5 voxels, truncated at 3.5σ as in
  scikit-image's ``gaussian_weights=True``), K1 = 0.01, K2 = 0.03, population covariances, the
  SSIM map averaged over the mask.

Identical images give NRMSE 0, PSNR ∞ and SSIM 1.

An output whose extent differs from the reference (e.g. the slice count was not a multiple of the
factor) is compared over the physical overlap: :func:`overlap` crops both to the common grid when
they share spacing and direction and their origins differ by whole voxels.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import ndimage

from .errors import InputError
from .volume import Volume


def _prepare(output: np.ndarray, reference: np.ndarray, mask: Optional[np.ndarray]):
    output = np.asarray(output, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if output.shape != reference.shape:
        raise InputError(f"output shape {output.shape} differs from reference shape {reference.shape}")
    if mask is None:
        mask = np.ones(reference.shape, dtype=bool)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != reference.shape:
        raise InputError(f"mask shape {mask.shape} differs from reference shape {reference.shape}")
    if not mask.any():
        raise InputError("the mask is empty: no voxel to evaluate")
    return output, reference, mask


def rmse(output, reference, mask=None) -> float:
    output, reference, mask = _prepare(output, reference, mask)
    return float(np.sqrt(np.mean((output[mask] - reference[mask]) ** 2)))


def nrmse(output, reference, mask=None) -> float:
    output, reference, mask = _prepare(output, reference, mask)
    mean = float(np.mean(reference[mask]))
    if mean == 0:
        raise InputError("the reference's mean in the mask is 0: NRMSE is undefined")
    return rmse(output, reference, mask) / abs(mean)


def psnr(output, reference, mask=None, data_range: Optional[float] = None) -> float:
    output, reference, mask = _prepare(output, reference, mask)
    if data_range is None:
        data_range = float(reference[mask].max() - reference[mask].min())
    error = rmse(output, reference, mask)
    if error == 0:
        return math.inf
    return 20.0 * math.log10(data_range / error) if data_range > 0 else -math.inf


def ssim_map(output, reference, data_range: float, sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    x = np.asarray(output, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    filt = lambda a: ndimage.gaussian_filter(a, sigma=sigma, truncate=truncate, mode="reflect")  # noqa: E731
    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx * mx
    vy = filt(y * y) - my * my
    cxy = filt(x * y) - mx * my
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(output, reference, mask=None, data_range: Optional[float] = None) -> float:
    output, reference, mask = _prepare(output, reference, mask)
    if data_range is None:
        data_range = float(reference[mask].max() - reference[mask].min()) or 1.0
    return float(np.mean(ssim_map(output, reference, data_range)[mask]))


def evaluate_arrays(output, reference, mask=None) -> dict:
    output, reference, mask = _prepare(output, reference, mask)
    data_range = float(reference[mask].max() - reference[mask].min()) or 1.0
    return {
        "nrmse": nrmse(output, reference, mask),
        "psnr": psnr(output, reference, mask, data_range),
        "ssim": ssim(output, reference, mask, data_range),
        "voxels": int(mask.sum()),
    }


def overlap(output: Volume, reference: Volume, tol: float = 1e-3) -> tuple:
    """Crop both volumes to their common physical extent; returns (output array, reference array,
    (ref_slices)) so that masks on the reference grid can be cropped the same way."""
    if not np.allclose(output.direction, reference.direction, atol=tol):
        raise InputError(
            f"the output's axis directions {np.round(output.direction, 4).tolist()} differ from the reference's "
            f"{np.round(reference.direction, 4).tolist()} (direction cosines, LPS); resample one onto the other first"
        )
    if not np.allclose(output.spacing, reference.spacing, atol=tol):
        raise InputError(
            f"the output grid (spacing {np.round(output.spacing, 4).tolist()}) does not match the reference "
            f"grid (spacing {np.round(reference.spacing, 4).tolist()}); resample one onto the other first"
        )
    # offset of the output's first voxel in reference index units (i, j, k)
    offset_ijk = np.linalg.solve(reference.direction * reference.spacing[None, :], output.origin - reference.origin)
    rounded = np.round(offset_ijk)
    if np.any(np.abs(offset_ijk - rounded) > 0.05):
        raise InputError(
            f"the output grid is shifted by a fraction of a voxel from the reference ({np.round(offset_ijk, 3).tolist()} "
            "voxels); they do not share grid lines"
        )
    off = rounded.astype(int)[::-1]  # (k, j, i)
    out_slices, ref_slices = [], []
    for axis in range(3):
        start_ref = max(off[axis], 0)
        stop_ref = min(off[axis] + output.array.shape[axis], reference.array.shape[axis])
        if stop_ref <= start_ref:
            raise InputError("the output and the reference do not overlap physically")
        ref_slices.append(slice(start_ref, stop_ref))
        out_slices.append(slice(start_ref - off[axis], stop_ref - off[axis]))
    return output.array[tuple(out_slices)], reference.array[tuple(ref_slices)], tuple(ref_slices)


def evaluate(output: Volume, reference: Volume, mask: Optional[Volume] = None) -> dict:
    """Metrics of ``output`` against ``reference`` over their physical overlap (and ``mask``, a
    volume on the reference grid; default: voxels where the reference is not 0)."""
    out, ref, ref_slices = overlap(output, reference)
    if mask is not None:
        if mask.array.shape != reference.array.shape:
            raise InputError(f"mask shape {mask.array.shape} differs from the reference shape {reference.array.shape}")
        m = mask.array[ref_slices] > 0
    else:
        m = ref != 0
    result = evaluate_arrays(out, ref, m)
    result["overlap_shape"] = list(ref.shape)
    return result
