"""Scan-specific IQT (``model="self"``): learn the LQ→HQ map from the scan itself, then enhance it.

A thick-slice scan carries its own high-resolution training data: its in-plane axes.  As in SMORE
(Zhao et al., IEEE TMI 2021) and the self-similarity work before it, each fine in-plane axis is
degraded the way the thick axis was acquired (Gaussian slice profile with FWHM = the factor, then
one sample per slab, then noise of the scan's own level, :func:`noise_sigma`), giving LQ/HQ pairs in the
planes that contain the thick axis.  A patch regression (``linear``) or IQT-SRep (``srep``) learns
on those pairs with patches one voxel wide across the remaining axis (``patch_shape="line"``), so a
patch never spans the coarse axis in training, and never the other fine axis at inference.

In the canonical frame of the scan (thick axis first, then the two fine in-plane axes p, q):

* training: the canonical array is the "HQ" volume; simulating along p gives canonical [p, a, q]
  and along q gives [q, a, p] (the remaining axes keep their order), so the line patch (t, 1, n)
  always lies across the thick axis a and along a fine axis;
* inference: the model runs on [a, p, q] (lines along q) and on [a, q, p] (lines along p) and the
  two results are averaged: both planes that contain the thick axis contribute.

The factor is the scan's thick / in-plane spacing ratio rounded (``api.spacing_factor``), or the one
asked for.  The learned model can be saved (``.iqtm``) and reused for a cohort of one protocol.
"""
from __future__ import annotations

import time

import numpy as np

from .errors import InputError
from .simulate import SimulationParameters, foreground_mask
from .volume import Volume

SELF = "self"
SELF_METHODS = ("linear", "srep")
SREP_INFERENCE_LAM = 0.1

# Small enough for a whole brain in well under two minutes on 2 cores, large enough to fit the map:
# one scan offers far fewer distinct patches than a template at every axis and noise level.
# Measured on the committed Colin27 and ICBM T2 crops (×4 along k, SNR 20; NRMSE ÷ trilinear's):
# line patches 2×1×5 0.839/0.814, 2×1×7 0.833/0.809, 3×1×9 0.818/0.795, 4×1×9 0.814/0.794; without the
# scan's noise added back to the training inputs 0.954/0.926.  Targets whose noise is independent of
# the inputs' (Recorrupted-to-Recorrupted: LQ simulated from y + z, target y − z, z ~ N(0, σ²)) made
# no difference on whole brains (ICBM T2 linear 0.0689 → 0.0693, srep 0.0674 → 0.0677; Colin27 linear
# 0.0620 → 0.0614): the scan's noise in the targets is not what limits the self-learned models.
TRAIN_OPTIONS = {
    "linear": {"patch_shape": "line", "patch_thick": 3, "patch_inplane": 9, "samples": 60_000, "realizations": 1},
    "srep": {"patch_shape": "line", "patch_thick": 3, "patch_inplane": 9, "samples": 20_000, "realizations": 1,
             "atoms": 128, "iterations": 50},
}


def check_method(method: str) -> None:
    if method not in SELF_METHODS:
        raise InputError(f"model 'self' (learning from the scan) works with {', '.join(SELF_METHODS)}, "
                         f"not {method}")


def noise_sigma(canonical: np.ndarray, mask=None) -> float:
    """The scan's noise σ, from differences of neighbours along the fine axes in the foreground
    (``mask``, default :func:`.simulate.foreground_mask`; a robust MAD: edges are few, so the median
    ignores them)."""
    mask = foreground_mask(canonical) if mask is None else mask
    d = np.concatenate([np.diff(canonical, axis=1)[mask[:, 1:] & mask[:, :-1]],
                        np.diff(canonical, axis=2)[mask[:, :, 1:] & mask[:, :, :-1]]])
    if d.size < 100:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def learn(canonical: np.ndarray, method: str, factor: int, reporter, seed: int = 0, **options):
    """A model of ``method`` learned from the scan's own fine axes (``canonical``: thick axis first,
    intensity-normalised).  Returns the :class:`~.models.ModelFile`."""
    from . import api

    check_method(method)
    if min(canonical.shape[1:]) < 4 * factor:
        raise InputError(f"the in-plane axes ({canonical.shape[1]}×{canonical.shape[2]} voxels) are too short to "
                         f"learn ×{factor} from the scan itself")
    started = time.perf_counter()
    volume = Volume(np.ascontiguousarray(canonical, dtype=np.float32), (1.0, 1.0, 1.0))
    # array order [k, j, i] = [a, p, q]: simulating along j degrades p, along i degrades q
    train_options = dict(TRAIN_OPTIONS[method], **options)
    # the blur averages the scan's own noise away, so the training inputs would be cleaner than the
    # thick slices the model meets: noise of the scan's level is added back (σ = mean foreground / SNR)
    foreground = foreground_mask(canonical)
    sigma = noise_sigma(canonical, foreground)
    snr = float(canonical[foreground].mean()) / sigma if sigma > 0 else None
    model = api.train(method, [volume], factor=factor, seed=seed, axes=("j", "i"),
                      simulation=SimulationParameters(factor=factor, snr=snr, seed=seed),
                      progress=reporter, data_names=["this scan's own in-plane axes"], **train_options)
    if method == "srep":
        # the shipped SRep's choice, measured here too (Colin27 ×4, whole brain, learned from the scan):
        # NRMSE 0.0613 at the training λ 0.05 and 0.0614 at 0.1, which codes in 0.75x the time
        model.params["inference_lam"] = SREP_INFERENCE_LAM
    model.name = f"{method}_self_x{factor}"
    model.training["learned_from_scan"] = True
    model.training["learn_seconds"] = round(time.perf_counter() - started, 1)
    model.training["scan_noise_sigma"] = sigma
    return model


def is_line_model(model) -> bool:
    """A model with line patches (t, 1, n): learned from a scan, applied across both fine axes."""
    if model is None or model.method not in SELF_METHODS:
        return False
    patch = model.params.get("lq_patch") or []
    return len(patch) == 3 and int(patch[1]) == 1 and int(patch[2]) > 1


def enhance_both_planes(spec, canonical: np.ndarray, factor: int, model, device: str, reporter, options: dict):
    """Run the line-patch model across both fine axes and average (see the module's docstring)."""
    hq_q, extras_q = spec.enhance(canonical, factor, model, device, reporter.sub(0.0, 0.5, "lines along q"),
                                  **options)
    swapped = np.ascontiguousarray(canonical.swapaxes(1, 2))
    hq_p, extras_p = spec.enhance(swapped, factor, model, device, reporter.sub(0.5, 1.0, "lines along p"), **options)
    hq = 0.5 * (np.asarray(hq_q, dtype=np.float32) + np.asarray(hq_p, dtype=np.float32).swapaxes(1, 2))
    extras = {k: 0.5 * (np.asarray(v) + np.asarray(extras_p[k]).swapaxes(1, 2)) for k, v in extras_q.items()}
    return hq, extras
