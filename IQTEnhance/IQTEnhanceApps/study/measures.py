"""What the study measures beyond NRMSE/PSNR/SSIM: measured SNR and tissue contrast, the pull to the
training mean, lesion contrast kept, trust-map/error correlation; aggregation and the claim checks.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from IQTEnhanceApps.study.cases import TRAINING_DATASET, crop_to_brain
from IQTEnhanceLib.grid import crop_to_whole_slabs
from IQTEnhanceLib.normalize import intensity_scale
from IQTEnhanceLib.simulate import SimulationParameters, simulate

PAPER_SREP = "srep-paper"                 # the paper's joint-dictionary SRep, beside the shipped hybrid
DDL_K128 = "ddl-k128"                     # IQT-DDL with the paper's larger dictionary (K = 128)
DL_SHIPPED, DDL_SHIPPED = "dl-shipped", "ddl-shipped"   # shipped networks beside a protocol run's
# rows shown only when their base row has other models (a protocol run): else they repeat the base row
SHIPPED_BESIDE = {DL_SHIPPED: "dl", DDL_SHIPPED: "ddl"}
LEARNED = ("srep", "ddl", "dl")           # the paper's three methods
CLAIM_METHODS = ("srep", PAPER_SREP, "ddl")   # the methods the claim is about, against "dl"
BASELINE = "linear"                       # the classic baseline every gain is measured against
# rows of every table: interpolation, then the classic IQT baselines, then the paper's methods
# Differences smaller than these count as ties in the claim check. They are about practical
# significance, not noise: the noise-seed sd of a whole-brain NRMSE is 0.06% of it (B-spline on
# Colin27, seeds 0-2: 0.07523/0.07516/0.07528).
TIE_NRMSE_PERCENT = 1.0   # % of DL's NRMSE
TIE_DROP_POINTS = 0.5     # percentage points of gain over trilinear
TIE_PULL_POINTS = 1.0     # percentage points of pull to the training mean
SELF_ROWS = ("linear-self", "srep-self")  # learned from each case's LQ scan alone (model "self")
STUDY_ORDER = ("nearest", "trilinear", "bspline", "linear", "forest", "srep", PAPER_SREP,
               "ddl", DDL_K128, DDL_SHIPPED, "dl", DL_SHIPPED) + SELF_ROWS


# ---------------------------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------------------------
def measured_snr(lq_a: np.ndarray, lq_b: np.ndarray, mask: np.ndarray) -> float:
    """SNR of two noise realisations of the same LQ: mean signal / noise σ, with σ from the
    difference (std / √2) over voxels brighter than the mean (where Rician ≈ Gaussian).  Voxels are
    chosen on the *sum* of the two, which (for Gaussian noise) is independent of their difference,
    so the choice does not bias σ."""
    m = mask.astype(bool)
    mean = float(0.5 * (lq_a[m].mean() + lq_b[m].mean()))
    bright = m & (0.5 * (lq_a + lq_b) > mean)
    sigma = float(np.std((lq_a - lq_b)[bright])) / math.sqrt(2.0)
    return mean / max(sigma, 1e-12)


def tissue_contrast(array: np.ndarray, memberships: np.ndarray, mask: np.ndarray) -> float:
    """Median of the bright class over the median of the middle class (WM/GM on T1), over voxels
    whose membership exceeds 0.9."""
    bright = mask & (memberships[2] > 0.9)
    middle = mask & (memberships[1] > 0.9)
    return float(np.median(array[bright]) / max(float(np.median(array[middle])), 1e-12))


def training_mean(loader: Callable, *, factor: int = 4, axis: str = "k", crop_margin: Optional[int] = 6) -> float:
    """Mean brain intensity of the training template in the models' normalised units (HQ divided by
    the intensity scale of its simulated LQ, as in :mod:`..training`)."""
    image, mask = loader(TRAINING_DATASET)
    if crop_margin is not None:
        image, mask = crop_to_brain(image, mask, crop_margin)
    image = crop_to_whole_slabs(image, factor, axis)
    mask = crop_to_whole_slabs(mask, factor, axis)
    lq, _ = simulate(image.with_array(image.array.astype(np.float32)),
                     SimulationParameters(factor=factor, axis=axis, snr=20.0, seed=0), mask=mask)
    m = mask.array > 0
    return float(np.mean(image.array[m])) / intensity_scale(lq.array)


def regression_to_mean(output: np.ndarray, truth: np.ndarray, mask: np.ndarray, scale: float,
                       mu_train: float, lowpass_sigma: float = 2.0) -> dict:
    """How much an output is pulled toward the training mean intensity.

    In the models' units (``/scale``), with the signed error ``e = output - truth`` and the distance
    ``d = truth - mu_train`` over the brain:

    * ``rtm_corr``: Pearson correlation of ``e`` with ``d`` (0: the error ignores how far the true
      intensity is from the training mean; < 0: bright voxels come out too dark and dark ones too
      bright);
    * ``rtm_pull``: -100 × the least-squares slope of ``e`` on ``d`` after both are smoothed with a
      Gaussian of ``lowpass_sigma`` voxels: the % of the distance to the training mean lost
      (100 % = the output is the training mean).  Smoothing removes most of the share that mere
      blurring of edges contributes (blur pulls a voxel to its *local* mean, which a sharp-edged
      test would confuse with the global one), so it mostly measures intensity mapping.
    """
    from scipy import ndimage

    m = mask.astype(bool)
    t = np.asarray(truth, dtype=np.float32) / np.float32(scale)
    o = np.asarray(output, dtype=np.float32) / np.float32(scale)
    e = o - t
    d = t - np.float32(mu_train)
    ev, dv = e[m].astype(np.float64), d[m].astype(np.float64)
    corr = float(np.corrcoef(ev, dv)[0, 1]) if ev.std() > 0 and dv.std() > 0 else 0.0
    es = ndimage.gaussian_filter(e, lowpass_sigma)[m].astype(np.float64)
    ds = ndimage.gaussian_filter(d, lowpass_sigma)[m].astype(np.float64)
    dc = ds - ds.mean()
    slope = float(np.dot(es - es.mean(), dc) / max(float(np.dot(dc, dc)), 1e-12))
    return {"rtm_corr": corr, "rtm_pull": -100.0 * slope}


def lesion_measures(output: np.ndarray, truth: np.ndarray, lesion_index: np.ndarray, lesions: list,
                    output_free: Optional[np.ndarray], truth_free: Optional[np.ndarray]) -> dict:
    """NRMSE inside the lesions and, with the lesion-free twin, the lesion contrast kept (%).

    Contrast kept of lesion n = Σ(output - output_free) / Σ(truth - truth_free) over its core
    (× 100): the share of the inserted intensity change that the method reproduces.  The twin has
    the same anatomy and noise, so this isolates the lesion.  100 % is perfect; < 100 % means the
    lesion was pulled toward its surroundings (partial volume of thick slices, or regression to the
    mean).
    """
    core = lesion_index > 0
    ref = truth[core].astype(np.float64)
    out = output[core].astype(np.float64)
    result = {"lesion_nrmse": float(np.sqrt(np.mean((out - ref) ** 2)) / abs(ref.mean())), "per_lesion": []}
    if output_free is None or truth_free is None:
        return result
    kept_all = []
    for p in lesions:
        c = lesion_index == p["id"]
        true_change = float(np.sum(truth[c].astype(np.float64) - truth_free[c]))
        out_change = float(np.sum(output[c].astype(np.float64) - output_free[c]))
        kept = 100.0 * out_change / true_change if true_change != 0 else float("nan")
        kept_all.append(kept)
        result["per_lesion"].append({"id": p["id"], "radius_mm": p["radius_mm"], "factor": p["factor"], "kept": kept})
    result["contrast_kept"] = float(np.nanmean(kept_all))
    return result


def trust_error_correlation(trust: np.ndarray, output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of a trust map with the absolute error in the brain."""
    m = mask.astype(bool)
    a = np.asarray(trust, dtype=np.float64)[m]
    b = np.abs(np.asarray(output, dtype=np.float64)[m] - truth[m])
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------------
# aggregation and the report
# ---------------------------------------------------------------------------------------------
def aggregate(records: list, key: str) -> dict:
    """{(case, method): (mean, sd, n) over the noise seeds and the model replicates} of one metric."""
    values = {}
    for r in records:
        if key in r and r[key] is not None and not (isinstance(r[key], float) and math.isnan(r[key])):
            values.setdefault((r["case"], r["method"]), []).append(float(r[key]))
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in values.items()}


def gain(results_nrmse: dict, case: str, method: str, over: str) -> Optional[float]:
    """% NRMSE reduction of ``method`` over ``over`` in ``case`` (positive = better)."""
    if (case, method) not in results_nrmse or (case, over) not in results_nrmse:
        return None
    a = results_nrmse[(case, method)][0]
    b = results_nrmse[(case, over)][0]
    return 100.0 * (b - a) / b if b > 0 else None


def spread_percent(results_nrmse: dict, case: str, method: str, over: str) -> float:
    """The two rows' spread (sd over replicates and seeds, summed) in % of ``over``'s NRMSE: a
    difference smaller than this is not called a win or a loss (0 with one run each)."""
    if (case, method) not in results_nrmse or (case, over) not in results_nrmse:
        return 0.0
    (_, sd_a, _), (b, sd_b, _) = results_nrmse[(case, method)], results_nrmse[(case, over)]
    return 100.0 * (sd_a + sd_b) / b if b > 0 else 0.0


def _verdict(advantage: Optional[float], tie: float) -> str:
    """'yes' when the advantage exceeds the tie margin, 'no' when the disadvantage does, else 'tie'."""
    if advantage is None or not math.isfinite(advantage):
        return "–"
    return "yes" if advantage > tie else ("no" if advantage < -tie else "tie")


def claim_checks(results: dict) -> dict:
    """The paper's claim, case by case: for every OOD case and X in {srep, ddl}, is X's NRMSE below
    DL's (a), does X lose less of its in-distribution gain over trilinear than DL does (b), and is
    DL pulled more toward the training mean than X (c, the claim's mechanism)?"""
    nrmse = aggregate(results["records"], "nrmse")
    pull = aggregate(results["records"], "rtm_pull")
    cases = results["cases"]
    ind = [c["name"] for c in cases if c["group"] == "in distribution"]
    ood = [c["name"] for c in cases if c["group"] != "in distribution"]
    out = {"in_distribution": ind, "ood": ood, "rows": []}
    ref = ind[0] if ind else None
    for c in ood:
        for x in CLAIM_METHODS:
            if (c, x) not in nrmse or (c, "dl") not in nrmse:
                continue
            vs_dl = gain(nrmse, c, x, "dl")  # % lower NRMSE than DL
            margin = max(TIE_NRMSE_PERCENT, spread_percent(nrmse, c, x, "dl"))
            row = {"case": c, "method": x, "vs_dl": vs_dl, "margin_a": margin, "a": _verdict(vs_dl, margin)}
            if ref is not None and (ref, x) in nrmse and (ref, "dl") in nrmse and (c, "trilinear") in nrmse \
                    and (ref, "trilinear") in nrmse:
                row["drop_x"] = gain(nrmse, ref, x, "trilinear") - gain(nrmse, c, x, "trilinear")
                row["drop_dl"] = gain(nrmse, ref, "dl", "trilinear") - gain(nrmse, c, "dl", "trilinear")
                row["b"] = _verdict(row["drop_dl"] - row["drop_x"], TIE_DROP_POINTS)
            if (c, x) in pull and (c, "dl") in pull:
                row["pull_x"], row["pull_dl"] = pull[(c, x)][0], pull[(c, "dl")][0]
                row["c"] = _verdict(row["pull_dl"] - row["pull_x"], TIE_PULL_POINTS)
            out["rows"].append(row)
    return out


# pairs of rows that differ in one design choice: (row, the row without it, what the difference measures)
DESIGN_PAIRS = (("srep", PAPER_SREP, "the ridge part (hybrid SRep against the paper's joint SRep)"),
                (DDL_K128, "ddl", "the larger dictionary (DDL with K = 128 against K = 64)"))


def pair_comparison(results: dict, row: str, other: str) -> Optional[dict]:
    """How much lower ``row``'s NRMSE is than ``other``'s, per case (%), with a verdict beyond the tie
    margin or the two rows' spread, the means in and out of distribution, the mean seconds per case
    and the number of trained models of each; None when either row is absent."""
    nrmse = aggregate(results["records"], "nrmse")
    seconds = aggregate(results["records"], "seconds")
    cases = results["cases"]
    if not any((c["name"], row) in nrmse and (c["name"], other) in nrmse for c in cases):
        return None
    per_case = {}
    for c in cases:
        name = c["name"]
        advantage = gain(nrmse, name, row, other)
        if advantage is None:
            continue
        margin = max(TIE_NRMSE_PERCENT, spread_percent(nrmse, name, row, other))
        per_case[name] = {"advantage": advantage, "margin": margin, "verdict": _verdict(advantage, margin),
                          "group": c["group"]}

    def mean_in(group_is_ind: bool):
        return _mean_over([v["advantage"] for v in per_case.values()
                           if (v["group"] == "in distribution") == group_is_ind])

    def mean_seconds(name):
        vals = [seconds[(c["name"], name)][0] for c in cases if (c["name"], name) in seconds]
        return float(np.mean(vals)) if vals else None

    models = {m["name"]: m.get("replicates", 1) for m in results.get("methods", [])}
    return {"per_case": per_case, "mean_in_distribution": mean_in(True), "mean_ood": mean_in(False),
            "seconds": (mean_seconds(row), mean_seconds(other)), "models": (models.get(row), models.get(other))}


def _mean_over(agg_gain: list) -> Optional[float]:
    vals = [g for g in agg_gain if g is not None]
    return float(np.mean(vals)) if vals else None
