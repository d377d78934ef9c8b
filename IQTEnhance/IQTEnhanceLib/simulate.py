"""Simulation of a low-quality (low-field, thick-slice, noisy) volume from a high-quality one.

Observation model (``Y = L H X + W`` plus a contrast change), applied in this order:

1. **Low-field contrast**: a 3-class tissue model (k-means on the log-intensities inside the
   brain/foreground gives soft memberships to dark, middle and bright tissue, i.e. CSF, GM, WM on
   T1w) and per-class multiplicative factors ``contrast = (c_dark, c_mid, c_bright)``; each voxel is
   scaled by the membership-weighted factor.  (1, 1, 1) leaves the image unchanged.
2. **Slice thickness**: along ``axis`` each LQ slice is the HQ signal weighted by a slice profile
   centred on its slab (``profile="gaussian"``: FWHM = ``thickness`` in HQ voxels, default the
   factor; ``"box"``: a flat average over ``thickness`` HQ voxels, default the slab itself), then one sample per slab of ``factor`` HQ
   slices.  LQ voxel centres are slab centres (see :mod:`.grid`), so there is no half-voxel shift.
3. **Rician noise**: ``sqrt((x + n1)² + n2²)`` with ``n1, n2 ~ N(0, σ²)`` and
   ``σ = mean foreground LQ intensity / snr``.  ``snr=None`` or ``inf`` adds none.

Every parameter is explicit, recorded in the returned dict (the JSON sidecar) and reproducible
from ``seed``.  :func:`sample_parameters` draws a parameter set from ranges for training.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from .errors import InputError
from .grid import check_factor, lq_geometry
from .progress import as_reporter
from .volume import Volume, array_axis, axis_letter

PROFILES = ("gaussian", "box")


@dataclasses.dataclass
class SimulationParameters:
    factor: int = 4
    axis: str = "k"
    snr: Optional[float] = 20.0
    profile: str = "gaussian"
    thickness: Optional[float] = None   # slice-profile FWHM (gaussian) or width (box) in HQ voxels; None = factor
    contrast: tuple = (1.0, 1.0, 1.0)   # multiplicative factors for dark, middle, bright tissue
    seed: Optional[int] = 0

    def validate(self) -> "SimulationParameters":
        self.factor = check_factor(self.factor)
        self.axis = axis_letter(self.axis)
        if self.profile not in PROFILES:
            raise InputError(f"slice profile must be one of {', '.join(PROFILES)} (got {self.profile!r})")
        if self.snr is not None and not (self.snr > 0):
            raise InputError(f"SNR must be positive (got {self.snr})")
        if self.thickness is not None and not (self.thickness > 0):
            raise InputError(f"slice thickness must be positive (got {self.thickness})")
        if len(self.contrast) != 3 or any(not (c > 0) for c in self.contrast):
            raise InputError(f"contrast needs three positive factors (got {self.contrast})")
        self.contrast = tuple(float(c) for c in self.contrast)
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["contrast"] = list(self.contrast)
        d["thickness_fwhm_hq_voxels"] = self.thickness if self.thickness is not None else float(self.factor)
        if d["snr"] is not None and math.isinf(d["snr"]):
            d["snr"] = None
        return d


@dataclasses.dataclass
class ParameterRanges:
    """Ranges for the stochastic mode (uniform draws). The defaults are the training ranges of the
    shipped models: SNR 10-40, thickness 0.8-1.2 × factor, contrast factors 0.85-1.15."""

    snr: tuple = (10.0, 40.0)
    thickness_scale: tuple = (0.8, 1.2)
    contrast: tuple = (0.85, 1.15)
    # the share of realizations drawn from a low-field tissue-contrast model instead (contrast and
    # SNR from ``lowfield``, a :class:`.lowfield.LowFieldRanges`; thickness as above).  0: none, and
    # the draws of every other realization are as without it
    lowfield_share: float = 0.0
    lowfield: Optional[object] = None


def sample_parameters(factor: int, axis: str, rng: np.random.Generator,
                      ranges: ParameterRanges | None = None, profile: str = "gaussian") -> SimulationParameters:
    r = ranges or ParameterRanges()
    return SimulationParameters(
        factor=factor, axis=axis, profile=profile,
        snr=float(rng.uniform(*r.snr)),
        thickness=float(factor * rng.uniform(*r.thickness_scale)),
        contrast=tuple(float(c) for c in rng.uniform(*r.contrast, size=3)),
        seed=int(rng.integers(0, 2**31 - 1)),
    ).validate()


def slice_profile_matrix(n_hq: int, factor: int, profile: str = "gaussian", fwhm: Optional[float] = None) -> np.ndarray:
    """(n_lq, n_hq) weights: row m is the slice profile of LQ slice m over HQ slices, normalised to 1.

    The profile is centred on HQ index m*f + (f-1)/2; near the volume's edges it is renormalised
    over the HQ slices that exist.
    """
    f = check_factor(factor)
    m = n_hq // f
    centres = np.arange(m) * f + (f - 1) / 2.0
    n = np.arange(n_hq)[None, :]
    if profile == "box":
        # each HQ voxel n spans [n - 1/2, n + 1/2]; its weight is its overlap with the slab of width
        # ``fwhm`` (default f) centred on the LQ slice, so width f gives exactly HQ slices m*f … m*f+f-1
        width = float(fwhm if fwhm is not None else f)
        lo, hi = centres[:, None] - width / 2.0, centres[:, None] + width / 2.0
        w = np.clip(np.minimum(n + 0.5, hi) - np.maximum(n - 0.5, lo), 0.0, 1.0)
        w[w < 1e-9] = 0.0
    else:
        sigma = (fwhm if fwhm is not None else f) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        w = np.exp(-0.5 * ((n - centres[:, None]) / sigma) ** 2)
        w[np.abs(n - centres[:, None]) > 4 * sigma + f] = 0.0
    return w / w.sum(axis=1, keepdims=True)


def tissue_memberships(array: np.ndarray, mask: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Soft memberships (3, *shape) to dark/middle/bright tissue from a 1-D k-means (3 classes) on
    log-intensities inside ``mask``; each voxel's memberships follow a softmax of its negative
    squared distance to the class centres (temperature = the mean within-class variance)."""
    x = np.log1p(np.maximum(array.astype(np.float64), 0.0))
    values = x[mask]
    if values.size < 10:
        raise InputError("the foreground mask is (nearly) empty: cannot estimate tissue classes")
    centres = np.percentile(values, [20, 50, 80])
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        new = np.array([values[labels == c].mean() if np.any(labels == c) else centres[c] for c in range(3)])
        if np.allclose(new, centres):
            break
        centres = new
    centres = np.sort(centres)
    labels = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
    var = max(float(np.mean((values - centres[labels]) ** 2)), 1e-6)
    d = -((x[None] - centres[:, None, None, None]) ** 2) / (2 * var)
    d -= d.max(axis=0, keepdims=True)
    p = np.exp(d)
    return (p / p.sum(axis=0, keepdims=True)).astype(np.float32)


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """A rough head/brain mask when none is given: voxels above 10% of the 99th percentile."""
    from scipy import ndimage

    a = array.astype(np.float32)
    threshold = 0.1 * float(np.percentile(a, 99))
    mask = a > threshold
    return ndimage.binary_fill_holes(ndimage.binary_opening(mask, iterations=1)) if mask.any() else mask


def apply_contrast(array: np.ndarray, mask: np.ndarray, contrast) -> np.ndarray:
    if all(abs(c - 1.0) < 1e-12 for c in contrast):
        return array.astype(np.float32)
    p = tissue_memberships(array, mask)
    factor = np.tensordot(np.asarray(contrast, dtype=np.float32), p, axes=1)
    return (array * factor).astype(np.float32)


def degrade_array(hq: np.ndarray, params: SimulationParameters, mask: Optional[np.ndarray] = None,
                  rng: Optional[np.random.Generator] = None, return_clean: bool = False):
    """Array-level simulation (``hq`` in [k, j, i] order). Returns the LQ array (float32), or
    (lq, noiseless lq, sigma) with ``return_clean``."""
    params = params.validate()
    rng = rng if rng is not None else np.random.default_rng(params.seed)
    ax = array_axis(params.axis)
    x = np.asarray(hq, dtype=np.float32)
    if mask is None:
        mask = foreground_mask(x)
    mask = mask.astype(bool)
    x = apply_contrast(x, mask, params.contrast)
    weights = slice_profile_matrix(x.shape[ax], params.factor, params.profile, params.thickness)
    lq = np.tensordot(weights.astype(np.float32), np.moveaxis(x, ax, 0), axes=1)
    lq = np.ascontiguousarray(np.moveaxis(lq, 0, ax)).astype(np.float32)
    lq_mask = np.moveaxis(np.tensordot(weights, np.moveaxis(mask.astype(np.float32), ax, 0), axes=1), 0, ax) > 0.5
    sigma = 0.0
    clean = lq
    if params.snr is not None and math.isfinite(params.snr):
        signal = float(lq[lq_mask].mean()) if lq_mask.any() else float(lq.mean())
        sigma = signal / float(params.snr)
        n1 = rng.normal(0.0, sigma, size=lq.shape).astype(np.float32)
        n2 = rng.normal(0.0, sigma, size=lq.shape).astype(np.float32)
        lq = np.sqrt((clean + n1) ** 2 + n2 ** 2).astype(np.float32)
    if return_clean:
        return lq, clean, sigma
    return lq


def simulate(hq: Volume, params: SimulationParameters | None = None, *, mask: Optional[Volume] = None,
             progress=None, cancel=None, **overrides) -> tuple:
    """Simulate an LQ Volume on its own coarser grid. Returns (lq Volume, record dict).

    ``overrides`` set fields of :class:`SimulationParameters` (factor, axis, snr, profile,
    thickness, contrast, seed).  The record holds every parameter, the noise σ actually used, the
    input and output geometry: write it as the JSON sidecar.
    """
    reporter = as_reporter(progress, cancel, stage="simulating")
    params = dataclasses.replace(params or SimulationParameters(), **overrides).validate()
    geometry = lq_geometry(hq, params.factor, params.axis)
    mask_array = None
    if mask is not None:
        if mask.array.shape != hq.array.shape:
            raise InputError(f"mask shape {mask.array.shape} differs from the volume shape {hq.array.shape}")
        mask_array = mask.array > 0
    reporter(0.1, "simulating low-field acquisition", force=True)
    lq, _clean, sigma = degrade_array(hq.array, params, mask_array, return_clean=True)
    reporter(1.0, "simulated", force=True)
    out = Volume(lq, geometry["spacing"], geometry["origin"], geometry["direction"])
    record = {
        "simulation": params.to_dict(),
        "noise_sigma": sigma,
        "noise": "rician" if sigma > 0 else "none",
        "hq_geometry": hq.geometry_dict(),
        "lq_geometry": out.geometry_dict(),
    }
    return out, record
