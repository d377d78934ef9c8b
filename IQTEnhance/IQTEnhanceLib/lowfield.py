"""A low-field (0.3-0.5 T) T1-weighted contrast model: the LQ of the IQT task "low-field scan in,
3 T-like scan out", in tissue terms.

What it says, per draw (:class:`LowFieldContrast`):

* ``gm_wm``: the fraction of the white/grey-matter intensity difference that is lost (0: as in the
  HQ, 1: GM as bright as WM);
* ``csf_gm``: the fraction of the grey-matter/CSF difference that is lost;
* ``snr_wm``: the signal-to-noise ratio in white matter (the noise σ is the LQ's WM mean / snr_wm;
  the grey-matter SNR follows from the new GM intensity and is recorded too).

Why these parameters: the longitudinal relaxation times of grey and white matter draw closer as the
field strength drops (T1 dispersion; Rooney et al., Magn Reson Med 57:308-318, 2007), so a T1-weighted
scan at 0.3-0.5 T separates GM from WM less than one at 3 T, and its SNR is lower.  Stochastic
low-field IQT (Lin et al., Medical Image Analysis 87:102807, 2023) draws the GM and WM signal
(contrast and per-tissue SNR) jointly from what real 0.36 T scans show.  The ranges of
:class:`LowFieldRanges` (GM/WM difference reduced by 20-50%, GM/CSF by 0-30%, WM SNR 8-25) are this
project's assumptions spanning such scans, not values fitted to a scanner; they are recorded in every
sidecar, so a result always says which contrast it was simulated with.

The contrast is applied with the simulator's tissue model (soft memberships to dark / middle /
bright tissue, :func:`.simulate.tissue_memberships`): the class means are measured on the HQ in the
mask, the target means follow from the draw, and the per-class factors are their ratios.  The HQ
target keeps its own contrast: that is the IQT task.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from .errors import InputError


@dataclasses.dataclass
class LowFieldContrast:
    gm_wm: float = 0.35       # fraction of the WM-GM difference lost
    csf_gm: float = 0.15      # fraction of the GM-CSF difference lost
    snr_wm: float = 15.0      # white-matter SNR of the LQ

    def validate(self) -> "LowFieldContrast":
        if not (0.0 <= self.gm_wm < 1.0 and 0.0 <= self.csf_gm < 1.0):
            raise InputError(f"low-field contrast losses must be in [0, 1) (got GM/WM {self.gm_wm}, "
                             f"CSF/GM {self.csf_gm})")
        if not self.snr_wm > 0:
            raise InputError(f"white-matter SNR must be positive (got {self.snr_wm})")
        return self


@dataclasses.dataclass
class LowFieldRanges:
    """Uniform ranges of a low-field draw (see the module's docstring for their basis)."""

    gm_wm: tuple = (0.2, 0.5)
    csf_gm: tuple = (0.0, 0.3)
    snr_wm: tuple = (8.0, 25.0)

    def draw(self, rng: np.random.Generator) -> LowFieldContrast:
        return LowFieldContrast(float(rng.uniform(*self.gm_wm)), float(rng.uniform(*self.csf_gm)),
                                float(rng.uniform(*self.snr_wm))).validate()


def class_means(array: np.ndarray, memberships: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Membership-weighted mean intensity of dark, middle and bright tissue (CSF, GM, WM on T1w)."""
    w = memberships[:, mask].astype(np.float64)   # float32 sums over a brain drift by ~0.5%
    return (w * array[mask].astype(np.float64)[None]).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)


def target_means(means, contrast: LowFieldContrast) -> np.ndarray:
    """The low-field class means: WM stays, GM moves ``gm_wm`` of the way towards WM, CSF keeps
    (1 - ``csf_gm``) of its distance below GM."""
    csf, gm, wm = (float(v) for v in means)
    if not (0 < csf < gm < wm):
        raise InputError("the tissue classes are not ordered dark < middle < bright (is this a T1-weighted "
                         "brain with a brain mask?); the low-field T1w contrast model does not apply")
    gm_new = wm - (1.0 - contrast.gm_wm) * (wm - gm)
    csf_new = max(gm_new - (1.0 - contrast.csf_gm) * (gm - csf), 0.05 * csf)
    return np.array([csf_new, gm_new, wm])


def contrast_factors(array: np.ndarray, memberships: np.ndarray, mask: np.ndarray, target) -> tuple:
    """Per-class factors (dark, middle, bright) whose membership-weighted result has exactly the
    ``target`` class means.  With soft memberships a voxel's factor mixes the classes' (Σ_c p_c f_c),
    so the class means after are a linear map of the factors, M f (M[c, c'] = Σ p_c p_c' x / Σ p_c):
    solved, not guessed (the plain ratios target / means reached ~65% of the drawn GM/WM loss)."""
    p = memberships[:, mask].astype(np.float64)
    x = array[mask].astype(np.float64)
    M = np.einsum("cn,dn,n->cd", p, p, x) / np.maximum(p.sum(axis=1), 1e-12)[:, None]
    factors = np.linalg.solve(M, np.asarray(target, dtype=np.float64))
    if not np.all(factors > 0):
        raise InputError(f"this low-field contrast cannot be reached with positive tissue factors ({factors})")
    return tuple(float(f) for f in factors)


def lowfield_parameters(hq: np.ndarray, mask: Optional[np.ndarray], contrast: LowFieldContrast, factor: int,
                        axis: str, seed: int = 0, profile: str = "gaussian", thickness=None, memberships=None):
    """(:class:`.simulate.SimulationParameters`, record) for a low-field LQ of ``hq``: the per-class
    factors of ``contrast`` and the foreground SNR that gives its white-matter SNR.  ``memberships``:
    the HQ's tissue memberships when the caller has them (training draws many contrasts per volume)."""
    from .simulate import SimulationParameters, foreground_mask, tissue_memberships

    contrast = contrast.validate()
    array = np.asarray(hq, dtype=np.float32)
    mask = foreground_mask(array) if mask is None else mask.astype(bool)
    memberships = tissue_memberships(array, mask) if memberships is None else memberships
    means = class_means(array, memberships, mask)
    factors = contrast_factors(array, memberships, mask, target_means(means, contrast))
    changed = array.astype(np.float64) * np.tensordot(np.asarray(factors), memberships.astype(np.float64), axes=1)
    new_means = class_means(changed, memberships, mask)
    # the simulator's σ is (mean foreground LQ intensity) / snr
    foreground = float(changed[mask].mean())
    snr = contrast.snr_wm * foreground / float(new_means[2])
    params = SimulationParameters(factor=factor, axis=axis, snr=snr, profile=profile, thickness=thickness,
                                  contrast=factors, seed=seed).validate()
    record = {"model": "low-field T1w tissue contrast", **dataclasses.asdict(contrast),
              "hq_class_means": [float(v) for v in means], "lq_class_means": [float(v) for v in new_means],
              "snr_gm": float(contrast.snr_wm * new_means[1] / new_means[2]),
              "wm_gm_ratio_hq": float(means[2] / means[1]), "wm_gm_ratio_lq": float(new_means[2] / new_means[1])}
    return params, record
