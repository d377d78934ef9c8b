"""Evaluation study: every method, in and out of the training distribution, with a report.

The paper's claim (Eldaly et al., MELBA 2024): on data unlike the training data, IQT-SRep and
IQT-DDL degrade less than the supervised IQT-DL, because a supervised regressor falls back to the
training mean.  This module measures it on real brain MRI we can get:

* **training set**: whatever the shipped models were trained on (the ICBM 2009c T1 template); the
  study only *loads* models, it never trains;
* **cases** (:class:`Case`), each reported separately: an in-distribution one (another subject,
  simulation inside the training ranges), unseen contrast, simulation outside the training ranges,
  and synthetic pathology (:func:`insert_lesions`, spheres inserted into the HQ before simulation);
* **metrics**: NRMSE, PSNR, SSIM in the brain mask; NRMSE inside lesions and lesion contrast kept
  (%); two regression-to-the-mean measures (:func:`regression_to_mean`);
* **output**: ``README.md`` (tables, verdict on the claim with numbers), PNG figures (same slice for
  every method, error maps, SRep trust maps when SRep offers them) and ``results.json``.

Everything runs through the method registry and :func:`..api.enhance` with each method's shipped
default model, so a method appears in the study as soon as its module and model exist.  The CLI
entry is ``iqt-enhance benchmark quality`` (:func:`register`).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import CancelledError, InputError, ModelError
from .files import atomic_path, write_json_atomic, write_text_atomic
from .grid import crop_to_whole_slabs
from .metrics import evaluate_arrays
from .normalize import intensity_scale
from .progress import as_reporter
from .simulate import ParameterRanges, SimulationParameters, simulate, tissue_memberships
from .volume import Volume

TRAINING_DATASET = "icbm2009c_t1"
LEARNED = ("srep", "ddl", "dl")           # the paper's three methods
CLAIM_METHODS = ("srep", "ddl")           # the methods the claim is about, against "dl"
BASELINE = "linear"                       # the classic baseline every gain is measured against
# rows of every table: interpolation, then the classic IQT baselines, then the paper's methods
# Differences smaller than these count as ties in the claim check. They are about practical
# significance, not noise: the noise-seed sd of a whole-brain NRMSE is 0.06% of it (B-spline on
# Colin27, seeds 0-2: 0.07523/0.07516/0.07528).
TIE_NRMSE_PERCENT = 1.0   # % of DL's NRMSE
TIE_DROP_POINTS = 0.5     # percentage points of gain over trilinear
TIE_PULL_POINTS = 1.0     # percentage points of pull to the training mean
STUDY_ORDER = ("nearest", "trilinear", "bspline", "linear", "forest", "srep", "ddl", "dl")


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LesionSpec:
    """Synthetic lesions: ``per_kind`` spheres of every radius × intensity factor.

    A lesion's intensity is ``factor`` × the local reference tissue intensity (the median of the
    bright tissue class, white matter on T1, within ``reference_mm`` of its centre); its edge is a
    logistic ramp of width ``edge_mm`` (smooth, like partial volume in a real scan).
    """

    radii_mm: tuple = (2.0, 4.0, 8.0)
    factors: tuple = (0.5, 1.5)
    per_kind: int = 2
    edge_mm: float = 0.5
    reference_mm: float = 10.0


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    title: str
    group: str                 # "in distribution" or "out of distribution"
    dataset: str
    snr: Optional[float] = 20.0
    contrast: tuple = (1.0, 1.0, 1.0)
    thickness: Optional[float] = None      # slice-profile FWHM in HQ voxels (None = the factor)
    lesions: Optional[LesionSpec] = None
    paired_with: Optional[str] = None      # lesion-free twin (same subject, noise seed): contrast kept
    note: str = ""

    @property
    def ood(self) -> bool:
        return self.group != "in distribution"

    def simulation(self, factor: int, axis: str, seed: int) -> SimulationParameters:
        return SimulationParameters(factor=factor, axis=axis, snr=self.snr, contrast=tuple(self.contrast),
                                    thickness=self.thickness, seed=seed).validate()

    def describe(self, factor: int) -> str:
        snr = "no noise" if self.snr is None else f"SNR {self.snr:g}"
        thick = self.thickness if self.thickness is not None else float(factor)
        contrast = "/".join(f"{c:g}" for c in self.contrast)
        text = f"{self.dataset}, ×{factor}, {snr}, slice FWHM {thick:g} voxels, contrast {contrast}"
        if self.lesions is not None:
            s = self.lesions
            text += (f", {s.per_kind * len(s.radii_mm) * len(s.factors)} lesions (radii "
                     f"{'/'.join(f'{r:g}' for r in s.radii_mm)} mm, ×{'/×'.join(f'{f:g}' for f in s.factors)} WM)")
        return text


def in_training_ranges(case: Case, factor: int, ranges: ParameterRanges | None = None) -> bool:
    """Whether the case's simulation parameters lie inside the shipped models' training ranges."""
    r = ranges or ParameterRanges()
    thick = (case.thickness if case.thickness is not None else factor) / factor
    snr_ok = case.snr is not None and r.snr[0] <= case.snr <= r.snr[1]
    return (snr_ok and r.thickness_scale[0] <= thick <= r.thickness_scale[1]
            and all(r.contrast[0] <= c <= r.contrast[1] for c in case.contrast))


def default_cases(full: bool = False) -> list:
    """The study's cases. ``full`` adds a thicker-slice case (more seeds are set by the caller)."""
    cases = [
        Case("in_distribution", "In distribution: Colin27 T1", "in distribution", "colin27_t1",
             note="another subject (Colin27, a single brain scanned 27 times), T1 like the training "
                  "template, simulation inside the training ranges"),
        Case("brain_2009a", "Second held-out brain: ICBM 2009a T1", "in distribution", "icbm2009a_t1",
             note="the ICBM 2009a T1 average: the same 152 subjects as the training template, registered "
                  "and processed differently; same contrast, simulation inside the training ranges, so in "
                  "distribution (a weaker test than Colin27: nearly the training anatomy)"),
        Case("ood_contrast_t2", "OOD contrast: ICBM 2009c T2", "out of distribution", "icbm2009c_t2",
             note="a contrast never seen in training; the SAME anatomy as the training T1 template "
                  "(both are the ICBM 2009c average), so only the contrast is new"),
        Case("ood_low_snr", "OOD simulation: SNR 5", "out of distribution", "colin27_t1", snr=5.0,
             note="noise 2× stronger than the noisiest training data (SNR 10-40)"),
        Case("ood_contrast_change", "OOD simulation: contrast change 0.6/1.0/1.4", "out of distribution",
             "colin27_t1", contrast=(0.6, 1.0, 1.4),
             note="dark/middle/bright tissue scaled by 0.6/1.0/1.4 in the LQ (training: 0.85-1.15); "
                  "the target is the unchanged HQ"),
        Case("pathology", "Synthetic pathology: lesions in Colin27", "out of distribution", "colin27_t1",
             lesions=LesionSpec(), paired_with="in_distribution",
             note="hypo- and hyper-intense spheres inserted into the HQ before simulation; otherwise "
                  "identical to the in-distribution case (same noise seed), so the lesion's imprint on "
                  "each output is measured exactly"),
    ]
    if full:
        cases.append(Case("ood_thick", "OOD simulation: slice profile 1.5× thicker", "out of distribution",
                          "colin27_t1", thickness=6.0,
                          note="slice-profile FWHM 6 HQ voxels for ×4 (training: 0.8-1.2 × the factor)"))
    return cases


def fixture_cases() -> list:
    """The cases on the committed crops (Testing/Data), for the smoke run and the tests."""
    by_name = {c.name: c for c in default_cases()}
    out = []
    for case in by_name.values():
        if case.dataset == "icbm2009a_t1":
            continue  # no committed crop of it
        if case.lesions is not None:  # a 48-slice crop holds two lesions of each kind only if smaller
            case = dataclasses.replace(case, lesions=LesionSpec(radii_mm=(2.0, 4.0), per_kind=1))
        out.append(case)
    return out


def dataset_loader(fixtures: bool = False) -> Callable:
    """``loader(name) -> (image Volume, mask Volume)`` from the data cache or the committed crops."""
    from . import data

    if fixtures:
        return data.load_fixture
    return lambda name: data.load_dataset(name, log=lambda *a, **k: None)


# ---------------------------------------------------------------------------------------------
# volumes: cropping, lesions, simulation
# ---------------------------------------------------------------------------------------------
def crop_to_brain(image: Volume, mask: Volume, margin: int = 6) -> tuple:
    """Crop both to the brain's bounding box plus ``margin`` voxels (saves ~45% of the voxels of a
    1 mm template); the geometry follows the crop."""
    m = mask.array > 0
    if not m.any():
        raise InputError("the brain mask is empty")
    idx = np.argwhere(m)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, m.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    origin = image.physical_point([int(lo[2]), int(lo[1]), int(lo[0])])
    make = lambda a: Volume(np.ascontiguousarray(a[crop]), image.spacing, origin, image.direction)  # noqa: E731
    return make(image.array), make(mask.array)


def _spacing_kji(volume: Volume) -> np.ndarray:
    return np.asarray(volume.spacing[::-1], dtype=float)


def insert_lesions(hq: Volume, mask: Volume, spec: LesionSpec = LesionSpec(), seed: int = 0) -> tuple:
    """Insert smooth-edged spherical lesions at seeded random white-matter positions in the brain.

    Returns ``(volume with lesions, weight map float32 in [0, 1], lesion index map int16 (lesion
    n+1 where its weight > 0.5, i.e. inside its radius), list of per-lesion dicts)``.  Centres lie
    at least radius + 2 edge widths + 1 mm inside the mask and lesions keep 3 mm apart; the
    largest are placed first.  The input volume is not modified.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x = np.array(hq.array, dtype=np.float32, copy=True)  # written below: never the caller's array
    m = mask.array > 0
    if m.shape != x.shape:
        raise InputError(f"mask shape {m.shape} differs from the volume shape {x.shape}")
    spacing = _spacing_kji(hq)
    # outside the volume counts as outside the brain (a crop's mask may touch its faces)
    depth = ndimage.distance_transform_edt(np.pad(m, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    # reference tissue: the bright class (white matter on T1) from the simulator's own tissue model
    memberships = tissue_memberships(x, m)
    bright = (memberships[2] > 0.9) & m
    # centres in white matter, as for MS-like lesions: there the inserted change is large for both
    # polarities (a ×0.5 lesion centred in grey matter would differ little from its surroundings)
    centre_ok = (memberships[2] > 0.5) & m
    del memberships
    if bright.sum() < 10:
        raise InputError("no bright (white-matter) tissue found to set the lesion intensities")
    global_reference = float(np.median(x[bright]))

    kinds = [(r, f) for r in sorted(spec.radii_mm, reverse=True) for f in spec.factors for _ in range(spec.per_kind)]
    weights = np.zeros(x.shape, dtype=np.float32)
    index = np.zeros(x.shape, dtype=np.int16)
    placed = []
    for radius, factor in kinds:
        deep = depth >= radius + 2 * spec.edge_mm + 1.0
        allowed = np.argwhere(deep & centre_ok)
        if len(allowed) == 0:
            allowed = np.argwhere(deep)
        centre = None
        for _ in range(2000):
            if len(allowed) == 0:
                break
            cand = allowed[int(rng.integers(len(allowed)))]
            if all(np.linalg.norm((cand - p["centre_kji"]) * spacing) >= radius + p["radius_mm"] + 3.0 for p in placed):
                centre = cand
                break
        if centre is None:
            raise InputError(f"the brain mask has no room for a lesion of radius {radius:g} mm "
                             f"(after {len(placed)} placed); use fewer or smaller lesions")
        # local box around the centre
        half = np.ceil((max(radius + 6 * spec.edge_mm, spec.reference_mm)) / spacing).astype(int)
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, x.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)], indexing="ij")
        r = np.sqrt(sum(g * g for g in grids))
        local = bright[box] & (r <= spec.reference_mm)
        reference = float(np.median(x[box][local])) if local.sum() >= 20 else global_reference
        target = factor * reference
        # logistic edge, scaled so that the centre reaches the target even for a 2 mm lesion
        w = 1.0 / (1.0 + np.exp(np.clip((r - radius) / spec.edge_mm, -50, 50)))
        w = np.minimum(w * (1.0 + math.exp(-radius / spec.edge_mm)), 1.0).astype(np.float32)
        w[w < 1e-4] = 0.0  # beyond ~4.6 edge widths: leave the voxels exactly as they were
        weights[box] = np.maximum(weights[box], w)
        n = len(placed) + 1
        index[box][w > 0.5] = n
        x[box] = (1.0 - w) * x[box] + w * np.float32(target)
        placed.append({"id": n, "centre_kji": centre, "radius_mm": float(radius), "factor": float(factor),
                       "reference": reference, "target": float(target), "voxels": int((w > 0.5).sum())})
    for p in placed:
        p["centre_kji"] = [int(v) for v in p["centre_kji"]]
    return hq.with_array(x), weights, index, placed


@dataclasses.dataclass
class CaseData:
    case: Case
    seed: int
    hq: Volume               # the ground truth (with lesions where the case has them)
    mask: np.ndarray         # brain mask, bool, HQ grid
    lq: Volume               # the simulated input
    record: dict             # the simulation record
    lesion_index: Optional[np.ndarray] = None
    lesions: list = dataclasses.field(default_factory=list)


def prepare_case(case: Case, loader: Callable, *, factor: int = 4, axis: str = "k", seed: int = 0,
                 crop_margin: Optional[int] = 6) -> CaseData:
    """Load, crop, insert lesions (if any) and simulate one case, deterministically from ``seed``."""
    image, mask = loader(case.dataset)
    if crop_margin is not None:
        image, mask = crop_to_brain(image, mask, crop_margin)
    image = crop_to_whole_slabs(image, factor, axis)
    mask = crop_to_whole_slabs(mask, factor, axis)
    image = image.with_array(np.asarray(image.array, dtype=np.float32))
    lesion_index, lesions = None, []
    if case.lesions is not None:
        image, _w, lesion_index, lesions = insert_lesions(image, mask, case.lesions, seed=seed + 1000)
    lq, record = simulate(image, case.simulation(factor, axis, seed), mask=mask)
    return CaseData(case, seed, image, mask.array > 0, lq, record, lesion_index, lesions)


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
# methods
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class MethodRun:
    name: str
    label: str
    model: object = None            # ModelFile or None
    options: dict = dataclasses.field(default_factory=dict)
    trust_option: Optional[str] = None

    def describe_model(self) -> str:
        if self.model is None:
            return "-"
        sha = (self.model.checksum or "")[:12]
        return f"{self.model.name} (sha256 {sha}…)"


def resolve_methods(requested: Optional[list] = None, models: Optional[dict] = None) -> tuple:
    """([MethodRun], {method: why it is missing}).

    Default: every available method; a learned method without a model (shipped or given in
    ``models``) is listed as missing instead of failing the study.
    """
    from .methods import METHOD_MODULES, available_methods, get_method
    from .models import default_model_path, load_model

    models = dict(models or {})
    unknown = [m for m in (requested or []) if m not in METHOD_MODULES]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHOD_MODULES)}")
    names = list(requested) if requested else sorted(
        METHOD_MODULES, key=lambda m: STUDY_ORDER.index(m) if m in STUDY_ORDER else len(STUDY_ORDER))
    present = set(available_methods())
    runs, missing = [], {}
    for name in names:
        if name not in present:
            missing[name] = "its module is not in this version"
            continue
        spec = get_method(name)
        model = None
        if spec.needs_model:
            try:
                source = models.get(name) or default_model_path(name)
                model = source if not isinstance(source, (str, Path)) else load_model(source)
                model.check_fits(method=name)
            except ModelError as exc:
                missing[name] = str(exc)
                continue
        trust = spec.extra_switches().get("trust")
        options = {trust: True} if trust else {}
        runs.append(MethodRun(name, spec.label, model, options, trust))
    return runs, missing


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StudyConfig:
    out_dir: Path
    cases: list
    methods: Optional[list] = None       # names; None = every available method
    models: Optional[dict] = None        # method -> path or ModelFile (default: shipped)
    seeds: tuple = (0,)
    factor: int = 4
    axis: str = "k"
    device: str = "cpu"
    fixtures: bool = False
    crop_margin: Optional[int] = 6
    figures: bool = True
    command: str = "iqt-enhance benchmark quality"


def _figure_slice(data: CaseData) -> int:
    """The coronal (j) index shown for every method: through the largest lesion's centre, else
    through the brain's centre of mass.  Coronal, so the thick axis k runs vertically."""
    if data.lesions:
        biggest = max(data.lesions, key=lambda p: (p["radius_mm"], -p["id"]))
        return int(biggest["centre_kji"][1])
    idx = np.argwhere(data.mask)
    return int(np.round(idx[:, 1].mean()))


def run_study(config: StudyConfig, *, progress=None, cancel=None, log=print) -> dict:
    """Run every method on every case and seed, write the report and figures to ``config.out_dir``,
    return the results (also written as ``results.json``)."""
    from . import api

    reporter = as_reporter(progress, cancel, stage="benchmark")
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, missing = resolve_methods(config.methods, config.models)
    if not runs:
        raise InputError("no method to evaluate")
    names = {c.name for c in config.cases}
    if len(names) != len(config.cases):
        raise InputError("case names must be unique")
    loader = dataset_loader(config.fixtures)
    mu_train = training_mean(loader, factor=config.factor, axis=config.axis, crop_margin=config.crop_margin)
    log(f"training mean intensity (normalised units): {mu_train:.4f}")

    records = []           # one per case × seed × method
    failures = []          # method runs that raised
    lesion_tables = []     # per-lesion rows
    figure_data = {}       # case -> slices for the figures (first seed)
    case_info = {}
    needed_twins = {c.paired_with for c in config.cases if c.paired_with}
    by_name = {c.name: c for c in config.cases}
    total = (len(config.cases) + len(needed_twins - names)) * len(config.seeds) * len(runs)
    done = 0
    for seed in config.seeds:
        twin_outputs = {}   # case name -> {"truth": array, method: array}
        # twins first so the pathology case finds them; a twin not itself in the study is run unreported
        order = sorted(config.cases, key=lambda c: c.paired_with is not None)
        for twin in needed_twins - set(by_name):
            order.insert(0, dataclasses.replace(next(c for c in default_cases(True) if c.name == twin),
                                                name=twin))
        for case in order:
            reported = case.name in by_name
            data = prepare_case(case, loader, factor=config.factor, axis=config.axis, seed=seed,
                                crop_margin=config.crop_margin)
            truth = data.hq.array
            scale = intensity_scale(data.lq.array)
            if reported:
                case_info.setdefault(case.name, {
                    "title": case.title, "group": case.group, "dataset": case.dataset,
                    "description": case.describe(config.factor), "note": case.note,
                    "in_training_ranges": in_training_ranges(case, config.factor),
                    "shape": list(truth.shape), "brain_voxels": int(data.mask.sum()),
                    "noise_sigma": data.record["noise_sigma"], "lesions": data.lesions,
                })
            keep_twin = case.name in needed_twins
            if keep_twin:
                twin_outputs[case.name] = {"truth": truth}
            twin = twin_outputs.get(case.paired_with) if case.paired_with else None
            fig_j = _figure_slice(data)
            if reported and seed == config.seeds[0]:
                figure_data[case.name] = {"j": fig_j, "truth": truth[:, fig_j, :].copy(),
                                          "mask": data.mask[:, fig_j, :].copy(),
                                          "lq": None, "outputs": {}, "trust": {}}
            for run in runs:
                reporter(done / max(total, 1), f"{case.name} (seed {seed}): {run.name}")
                t0 = time.perf_counter()
                try:
                    result = api.enhance(data.lq, run.name, model=run.model, axis=config.axis,
                                         factor=config.factor if run.model is None else None,
                                         device=config.device, progress=reporter.sub(
                                             done / max(total, 1), (done + 1) / max(total, 1),
                                             f"{case.name}: {run.name}"), **run.options)
                    if result.volume.array.shape != truth.shape:
                        raise RuntimeError(f"returned {result.volume.array.shape} for a {truth.shape} reference")
                except CancelledError:
                    raise
                except Exception as exc:  # one broken method must not sink a 30-minute study: report it
                    failures.append({"case": case.name, "seed": seed, "method": run.name,
                                     "error": f"{type(exc).__name__}: {exc}"})
                    log(f"  {case.name:22s} seed {seed} {run.name:10s} FAILED: {type(exc).__name__}: {exc}")
                    done += 1
                    continue
                seconds = time.perf_counter() - t0
                output = result.volume.array
                if keep_twin:
                    twin_outputs[case.name][run.name] = output
                if not reported:
                    done += 1
                    continue
                rec = {"case": case.name, "seed": seed, "method": run.name, "seconds": seconds}
                rec.update({k: v for k, v in evaluate_arrays(output, truth, data.mask).items() if k != "voxels"})
                rec.update(regression_to_mean(output, truth, data.mask, scale, mu_train))
                trust = next((v for k, v in result.extras.items() if "trust" in k), None)
                if trust is not None:
                    rec["trust_error_corr"] = trust_error_correlation(trust.array, output, truth, data.mask)
                if data.lesion_index is not None:
                    lm = lesion_measures(output, truth, data.lesion_index, data.lesions,
                                         twin.get(run.name) if twin else None, twin["truth"] if twin else None)
                    for row in lm.pop("per_lesion"):
                        lesion_tables.append({"case": case.name, "seed": seed, "method": run.name, **row})
                    rec.update(lm)
                records.append(rec)
                if case.name in figure_data and seed == config.seeds[0]:
                    fd = figure_data[case.name]
                    fd["outputs"][run.name] = output[:, fig_j, :].copy()
                    if trust is not None:
                        fd["trust"][run.name] = trust.array[:, fig_j, :].copy()
                log(f"  {case.name:22s} seed {seed} {run.name:10s} NRMSE {rec['nrmse']:.4f} SSIM {rec['ssim']:.4f} "
                    f"pull {rec['rtm_pull']:+.1f}% ({seconds:.1f} s)")
                done += 1
            del data
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command, "fixtures": config.fixtures, "seeds": list(config.seeds),
        "factor": config.factor, "axis": config.axis, "device": config.device,
        "training_dataset": TRAINING_DATASET, "training_ranges": dataclasses.asdict(ParameterRanges()),
        "mu_train": mu_train,
        "methods": [{"name": r.name, "label": r.label, "model": r.describe_model(),
                     "training_data": (r.model.training.get("data") if r.model is not None else None),
                     "training_simulation": (r.model.training.get("simulation") if r.model is not None else None)}
                    for r in runs],
        "missing": missing,
        "cases": [dict(name=c.name, **case_info[c.name]) for c in config.cases],
        "records": records, "lesions": lesion_tables, "failures": failures,
        "seconds": time.perf_counter() - started,
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, Python {platform.python_version()}",
    }
    if config.figures:
        save_figure_slices(figure_data, out_dir / FIGURE_SLICES)
        results["figures"] = write_figures(results, figure_data, out_dir)
    write_json_atomic(out_dir / "results.json", results, indent=1)
    write_text_atomic(out_dir / "README.md", render_report(results))
    reporter(1.0, "benchmark done", force=True)
    return results


FIGURE_SLICES = "figure_slices.npz"  # the slices the figures show, to redraw them without a rerun


def save_figure_slices(figure_data: dict, path: Path) -> None:
    arrays = {}
    for case, fd in figure_data.items():
        arrays[f"{case}|j"] = np.asarray(fd["j"])
        arrays[f"{case}|truth"] = fd["truth"]
        arrays[f"{case}|mask"] = fd["mask"]
        for kind in ("outputs", "trust"):
            for method, a in fd[kind].items():
                arrays[f"{case}|{kind}|{method}"] = a
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_figure_slices(path: Path) -> dict:
    figure_data = {}
    with np.load(path) as z:
        for key in z.files:
            parts = key.split("|")
            fd = figure_data.setdefault(parts[0], {"outputs": {}, "trust": {}})
            if len(parts) == 2:
                fd[parts[1]] = int(z[key]) if parts[1] == "j" else z[key]
            else:
                fd[parts[1]][parts[2]] = z[key]
    return figure_data


def rerender(out_dir) -> dict:
    """Redraw the figures (when the slices were saved) and rewrite README.md from ``results.json``
    in ``out_dir``: a change to the report's text or figures needs no new run."""
    out_dir = Path(out_dir)
    source = out_dir / "results.json"
    if not source.exists():
        raise InputError(f"{source}: no results to render; run the benchmark first")
    results = json.loads(source.read_text())
    if (out_dir / FIGURE_SLICES).exists():
        results["figures"] = write_figures(results, load_figure_slices(out_dir / FIGURE_SLICES), out_dir)
        write_json_atomic(source, results, indent=1)
    write_text_atomic(out_dir / "README.md", render_report(results))
    return results


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# aggregation and the report
# ---------------------------------------------------------------------------------------------
def aggregate(records: list, key: str) -> dict:
    """{(case, method): (mean, sd over seeds, n)} of one metric."""
    values = {}
    for r in records:
        if key in r and r[key] is not None and not (isinstance(r[key], float) and math.isnan(r[key])):
            values.setdefault((r["case"], r["method"]), []).append(float(r[key]))
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in values.items()}


def _fmt(value, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cell(agg: dict, case: str, method: str, digits: int, best: Optional[str] = None, signed: bool = False) -> str:
    if (case, method) not in agg:
        return "–"
    mean, sd, n = agg[(case, method)]
    text = _fmt(mean, digits, signed) + (f" ± {sd:.{digits}f}" if n > 1 else "")
    return f"**{text}**" if best == method else text


def _best(agg: dict, case: str, methods: list, higher: bool) -> Optional[str]:
    vals = [(agg[(case, m)][0], m) for m in methods if (case, m) in agg and math.isfinite(agg[(case, m)][0])]
    if not vals:
        return None
    return (max if higher else min)(vals)[1]


def gain(results_nrmse: dict, case: str, method: str, over: str) -> Optional[float]:
    """% NRMSE reduction of ``method`` over ``over`` in ``case`` (positive = better)."""
    if (case, method) not in results_nrmse or (case, over) not in results_nrmse:
        return None
    a = results_nrmse[(case, method)][0]
    b = results_nrmse[(case, over)][0]
    return 100.0 * (b - a) / b if b > 0 else None


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
            row = {"case": c, "method": x, "vs_dl": vs_dl,
                   "a": _verdict(vs_dl, TIE_NRMSE_PERCENT)}
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


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _mean_over(agg_gain: list) -> Optional[float]:
    vals = [g for g in agg_gain if g is not None]
    return float(np.mean(vals)) if vals else None


def describe_training_simulation(record: Optional[dict]) -> str:
    """One line for a model's training simulation record (``model.training["simulation"]``)."""
    if not record:
        return "-"

    def span(key, unit=""):
        lo, hi = record[key]
        return f"{lo:g}{unit}" if lo == hi else f"{lo:g}-{hi:g}{unit}"

    axes = ",".join(record.get("axes") or [])
    if record.get("mode") == "stochastic":
        contrast = "none" if tuple(record["contrast"]) == (1.0, 1.0) else span("contrast")
        text = f"stochastic: SNR {span('snr')}, thickness {span('thickness_scale', '×')}, contrast {contrast}"
    else:
        contrast = record.get("contrast") or [1.0]
        fwhm = record.get("thickness_fwhm_hq_voxels")
        snr = record.get("snr")
        text = ("fixed: " + (f"SNR {snr:g}" if snr is not None else "no noise")
                + (f", slice FWHM {fwhm:g} voxels" if fwhm else "")
                + (", contrast none" if all(c == 1.0 for c in contrast)
                   else ", contrast " + "/".join(f"{c:g}" for c in contrast)))
    return text + (f"; axes {axes}" if axes else "")


def render_report(results: dict) -> str:
    """The Markdown report (README.md of the results folder)."""
    records = results["records"]
    methods = [m["name"] for m in results["methods"]]
    cases = results["cases"]
    case_names = [c["name"] for c in cases]
    nrmse = aggregate(records, "nrmse")
    psnr = aggregate(records, "psnr")
    ssim = aggregate(records, "ssim")
    pull = aggregate(records, "rtm_pull")
    corr = aggregate(records, "rtm_corr")
    secs = aggregate(records, "seconds")
    lesion_nrmse = aggregate(records, "lesion_nrmse")
    kept = aggregate(records, "contrast_kept")
    trust_corr = aggregate(records, "trust_error_corr")
    seeds = results["seeds"]
    L = []
    L.append("# IQTEnhance evaluation study: in and out of the training distribution\n")
    data_kind = ("the small committed test crops (Testing/Data): a smoke run, not a result"
                 if results["fixtures"] else "whole brains (cropped to the brain's bounding box)")
    L.append(f"Generated by `{results['command']}` on {results['created']} ({results['machine']}; "
             f"{results['seconds'] / 60:.1f} min). Data: {data_kind}. "
             f"{len(seeds)} noise seed(s) ({', '.join(map(str, seeds))})"
             + ("; tables give mean ± sd over seeds." if len(seeds) > 1 else
                "; one run per case (the noise-seed sd of a whole-brain NRMSE is about 0.06% of it, so the "
                "differences discussed here are not noise; `--full` runs three seeds).") + "\n")

    # ---- headline ---------------------------------------------------------------------------
    L.append("## Headline\n")
    L.extend(_headline(results, nrmse, kept, pull))
    L.append("")

    # ---- setup ------------------------------------------------------------------------------
    L.append("## Set-up\n")
    L.append(f"- Task: ×{results['factor']} thick slices along {results['axis']} (Gaussian slice profile, "
             "Rician noise; see `IQTEnhanceLib/simulate.py`); every output is compared with the HQ volume "
             "inside the brain mask.")
    r = results["training_ranges"]
    L.append(f"- Training data of the shipped models: `{results['training_dataset']}` (ICBM 2009c T1 "
             f"template), LQ simulated along i, j and k; the simulation each model was trained with is in the "
             f"table below (the library's default training ranges: SNR {r['snr'][0]:g}-{r['snr'][1]:g}, slice "
             f"thickness {r['thickness_scale'][0]:g}-{r['thickness_scale'][1]:g}× the factor, tissue contrast "
             f"factors {r['contrast'][0]:g}-{r['contrast'][1]:g}; a case is \"in the training ranges\" when it "
             "lies inside these). The study only loads models; it trains nothing.")
    L.append(f"- Training mean intensity (normalised units, used by the regression-to-the-mean measure): "
             f"{results['mu_train']:.3f}.\n")
    rows = [[f"`{m['name']}`", m["label"], m["model"], m.get("training_data") or "-",
             describe_training_simulation(m.get("training_simulation"))] for m in results["methods"]]
    L.append(_table(["method", "name", "model", "trained on", "training simulation"], rows))
    if results["missing"]:
        L.append("\nNot evaluated (missing):\n")
        for name, why in results["missing"].items():
            L.append(f"- `{name}`: {why}")
    if results.get("failures"):
        L.append("\n**Failed runs** (left out of every table):\n")
        for f in results["failures"]:
            L.append(f"- `{f['method']}` on `{f['case']}` (seed {f['seed']}): {f['error']}")
    L.append("\nCases:\n")
    rows = []
    for c in cases:
        rows.append([f"`{c['name']}`", c["group"], "yes" if c["in_training_ranges"] else "**no**",
                     c["description"], c["note"]])
    L.append(_table(["case", "group", "simulation in training ranges", "data and simulation", "why"], rows))
    L.append("")

    # ---- main tables --------------------------------------------------------------------------
    def metric_table(agg, digits, higher, title, signed=False):
        L.append(f"### {title}\n")
        rows = []
        for m in methods:
            rows.append([f"`{m}`"] + [_cell(agg, c, m, digits, _best(agg, c, methods, higher), signed)
                                      for c in case_names])
        L.append(_table(["method"] + [f"`{c}`" for c in case_names], rows))
        L.append("")

    L.append("## Results\n")
    L.append("Best per case in bold.\n")
    metric_table(nrmse, 4, False, "NRMSE in the brain mask (lower is better)")
    metric_table(ssim, 4, True, "SSIM in the brain mask (higher is better)")
    metric_table(psnr, 2, True, "PSNR in the brain mask, dB (higher is better)")

    # ---- gains over linear -------------------------------------------------------------------
    L.append(f"### Gain over linear regression (% lower NRMSE than `{BASELINE}`; negative = worse)\n")
    if BASELINE in methods:
        rows = []
        ood_names = [c["name"] for c in cases if c["group"] != "in distribution"]
        ind_names = [c["name"] for c in cases if c["group"] == "in distribution"]
        for m in methods:
            if m == BASELINE:
                rows.append([f"`{m}`"] + ["0 (reference)"] * (len(case_names) + 2))
                continue
            g = [gain(nrmse, c, m, BASELINE) for c in case_names]
            rows.append([f"`{m}`"] + [_fmt(v, 1, True) for v in g]
                        + [_fmt(_mean_over([gain(nrmse, c, m, BASELINE) for c in ind_names]), 1, True),
                           _fmt(_mean_over([gain(nrmse, c, m, BASELINE) for c in ood_names]), 1, True)])
        L.append(_table(["method"] + [f"`{c}`" for c in case_names] + ["mean in distribution", "mean OOD"], rows))
    else:
        L.append("`linear` was not evaluated, so no gain over it can be given.")
    L.append("")

    # ---- regression to the mean ---------------------------------------------------------------
    L.append("### Regression to the training mean\n")
    L.append("Pull to the training mean (%): -100 × the slope of the smoothed signed error on the smoothed "
             "distance of the true intensity from the training mean (σ = 2 voxels; 0 = none, 100 = the output "
             "is the training mean; negative = contrast exaggerated). In brackets: the voxel-wise correlation "
             "of the signed error with that distance.\n")
    rows = []
    for m in methods:
        row = [f"`{m}`"]
        for c in case_names:
            if (c, m) in pull:
                row.append(f"{_fmt(pull[(c, m)][0], 1, True)} ({_fmt(corr[(c, m)][0], 2, True)})")
            else:
                row.append("–")
        rows.append(row)
    L.append(_table(["method"] + [f"`{c}`" for c in case_names], rows))
    L.append("")

    # ---- lesions ------------------------------------------------------------------------------
    lesion_cases = [c for c in cases if c.get("lesions")]
    for c in lesion_cases:
        L.append(f"### Lesions (`{c['name']}`)\n")
        kinds = sorted({(p["radius_mm"], p["factor"]) for p in c["lesions"]})
        L.append(f"{len(c['lesions'])} lesions; contrast kept = the share (%) of the inserted intensity "
                 "change each output reproduces inside the lesion (paired with the lesion-free twin; "
                 "100 = perfect).\n")
        per = {}
        for row in results["lesions"]:
            if row["case"] == c["name"] and math.isfinite(row["kept"]):
                per.setdefault((row["method"], row["radius_mm"], row["factor"]), []).append(row["kept"])
        header = ["method", "NRMSE in lesions", "contrast kept (all)"] + [
            f"r {r:g} mm ×{f:g}" for r, f in kinds]
        rows = []
        for m in methods:
            best_l = _best(lesion_nrmse, c["name"], methods, False)
            row = [f"`{m}`", _cell(lesion_nrmse, c["name"], m, 4, best_l), _cell(kept, c["name"], m, 1)]
            row += [_fmt(float(np.mean(per[(m, r, f)])), 1) if (m, r, f) in per else "–" for r, f in kinds]
            rows.append(row)
        L.append(_table(header, rows))
        L.append("")

    if trust_corr:
        L.append("### SRep trust map\n")
        L.append("Voxel-wise correlation of the trust map (SRep: the RMS residual of the sparse code, high = "
                 "the LQ patch is poorly explained by the dictionary) with the absolute error in the brain; "
                 "positive = the map points at the errors:\n")
        rows = [[f"`{m}`"] + [_cell(trust_corr, c, m, 2, signed=True) for c in case_names]
                for m in methods if any((c, m) in trust_corr for c in case_names)]
        L.append(_table(["method"] + [f"`{c}`" for c in case_names], rows))
        L.append("")

    L.append("### Run time per case (s, whole pipeline through `api.enhance`, this machine)\n")
    rows = [[f"`{m}`"] + [_cell(secs, c, m, 1) for c in case_names] for m in methods]
    L.append(_table(["method"] + [f"`{c}`" for c in case_names], rows))
    L.append("")

    # ---- the claim --------------------------------------------------------------------------
    L.append("## Does the paper's claim hold here?\n")
    L.extend(_claim_text(results, nrmse, ssim, kept, pull))
    L.append("")

    # ---- figures ------------------------------------------------------------------------------
    figures = results.get("figures") or {}
    if figures:
        L.append("## Figures\n")
        for key, (path, caption) in figures.items():
            L.append(f"**{caption}**\n\n![{key}]({path})\n")

    L.append("## Caveats\n")
    L.append("- All LQ data are simulated from HQ volumes with the same simulator family the models were trained "
             "with; real low-field scans differ in ways no simulator captures.")
    L.append("- The training set is one template; Colin27 is a single (averaged) subject, and the ICBM 2009c T2 "
             "and 2009a T1 are averages of the same population as the training template.")
    L.append("- The shipped models are small and trained briefly on 2 CPU cores; longer training or a GPU may "
             "change the ranking, in or out of distribution.")
    L.append("- Metrics are computed on the HQ grid inside the brain mask; the crop to the brain's bounding box "
             "does not change them.")
    L.append("\nReproduce: `" + results["command"] + f"` ({results['seconds'] / 60:.0f} min here; `--full` adds "
             "seeds and a thicker-slice case). Every number above is in `results.json` beside this file.")
    return "\n".join(L) + "\n"


def _headline(results, nrmse, kept, pull) -> list:
    methods = [m["name"] for m in results["methods"]]
    cases = results["cases"]
    ind = [c["name"] for c in cases if c["group"] == "in distribution"]
    ood = [c["name"] for c in cases if c["group"] != "in distribution"]
    out = []
    if BASELINE in methods:
        for m in (x for x in ("srep", "ddl", "dl", "forest") if x in methods):
            gi = _mean_over([gain(nrmse, c, m, BASELINE) for c in ind])
            go = _mean_over([gain(nrmse, c, m, BASELINE) for c in ood])
            def per(names):
                return ", ".join(f"{c} {_fmt(gain(nrmse, c, m, BASELINE), 1, True)}%" for c in names
                                 if gain(nrmse, c, m, BASELINE) is not None)

            out.append(f"- **{m}** gains {_fmt(gi, 1, True)}% over linear regression on average in distribution "
                       f"({per(ind)}) and {_fmt(go, 1, True)}% on average out of distribution ({per(ood)}); "
                       "gain = % lower NRMSE than `linear`, negative = worse than linear.")
    else:
        out.append("- `linear` was not evaluated: no gains over linear regression can be given.")
    check = claim_checks(results)
    if check["rows"]:
        for x in CLAIM_METHODS:
            rows = [r for r in check["rows"] if r["method"] == x]
            if not rows:
                continue
            wins = [r["case"] for r in rows if r["a"] == "yes"]
            ties = [r["case"] for r in rows if r["a"] == "tie"]
            out.append(f"- **{x} vs dl out of distribution**: NRMSE lower than dl's by more than "
                       f"{TIE_NRMSE_PERCENT:g}% in {len(wins)} of {len(rows)} OOD cases"
                       + (f" ({', '.join(wins)})" if wins else "")
                       + (f", within {TIE_NRMSE_PERCENT:g}% in {len(ties)} ({', '.join(ties)})" if ties else "")
                       + "; per case: " + ", ".join(f"{r['case']} {_fmt(r['vs_dl'], 1, True)}%" for r in rows)
                       + " (% lower NRMSE than dl).")
        mech = [r for r in check["rows"] if "c" in r]
        if mech:
            more = [f"{r['case']} vs {r['method']}" for r in mech if r["c"] == "yes"]
            out.append(f"- **The claim's mechanism** (dl pulled toward the training mean more than srep/ddl, by more "
                       f"than {TIE_PULL_POINTS:g} point): seen in {len(more)} of {len(mech)} OOD comparisons"
                       + (f" ({', '.join(more)})" if more else "") + "; see the pull table.")
    else:
        out.append("- The claim cannot be checked: dl and srep/ddl were not all evaluated.")
    for c in cases:
        if c.get("lesions"):
            vals = [(m, kept[(c["name"], m)][0]) for m in methods if (c["name"], m) in kept]
            if vals:
                out.append(f"- Lesion contrast kept ({c['name']}): " +
                           ", ".join(f"{m} {v:.0f}%" for m, v in vals) + ".")
    return out


def _claim_text(results, nrmse, ssim, kept, pull) -> list:
    check = claim_checks(results)
    methods = [m["name"] for m in results["methods"]]
    out = ["The claim: on data unlike the training data, SRep and DDL degrade less than DL (lower NRMSE, higher "
           "SSIM), because a supervised regressor falls back to the training mean. Tested here case by case: "
           "(a) is the method's NRMSE lower than DL's; (b) does it lose less of its in-distribution gain over "
           "trilinear interpolation than DL does (drop = gain in distribution − gain in the case, in "
           f"percentage points); (c) the claim's mechanism: is DL pulled toward the training mean more than "
           f"the method (pull as defined above). Differences under {TIE_NRMSE_PERCENT:g}% of NRMSE (a), "
           f"{TIE_DROP_POINTS:g} points (b) or {TIE_PULL_POINTS:g} point of pull (c) are called ties.\n"]
    if not check["rows"]:
        missing = [m for m in ("srep", "ddl", "dl") if m not in methods]
        out.append(f"Not testable in this run: {', '.join(missing)} not evaluated.")
        return out
    rows = []
    for r in check["rows"]:
        c, x = r["case"], r["method"]
        s_x = ssim.get((c, x), (float("nan"),))[0]
        s_dl = ssim.get((c, "dl"), (float("nan"),))[0]
        rows.append([f"`{c}`", f"`{x}`", f"{nrmse[(c, x)][0]:.4f} vs {nrmse[(c, 'dl')][0]:.4f}",
                     f"{s_x:.4f} vs {s_dl:.4f}", f"{r['a']} ({_fmt(r['vs_dl'], 1, True)}%)",
                     (f"{r['drop_x']:+.1f} vs {r['drop_dl']:+.1f}" if "drop_x" in r else "–"),
                     r.get("b", "–"),
                     (f"{r['pull_x']:+.1f} vs {r['pull_dl']:+.1f}" if "pull_x" in r else "–"),
                     r.get("c", "–")])
    out.append(_table(["case", "method", "NRMSE (method vs dl)", "SSIM (method vs dl)", "(a) lower NRMSE (% vs dl)",
                       "drop of gain over trilinear, pp (method vs dl)", "(b) degrades less",
                       "pull to training mean, % (method vs dl)", "(c) dl pulled more"], rows))
    out.append("")
    for x in CLAIM_METHODS:
        rs = [r for r in check["rows"] if r["method"] == x]
        if not rs:
            continue
        def summary(key):
            parts = []
            for verdict, word in (("yes", "holds"), ("tie", "ties"), ("no", "fails")):
                cs = [r["case"] for r in rs if r.get(key) == verdict]
                if cs:
                    parts.append(f"{word} in {len(cs)} ({', '.join(cs)})")
            return "; ".join(parts) if parts else "not measured"

        out.append(f"- **{x}** over {len(rs)} OOD cases: (a) {summary('a')}. (b) {summary('b')}. "
                   f"(c) {summary('c')}.")
    lesion_cases = [c["name"] for c in results["cases"] if c.get("lesions")]
    for c in lesion_cases:
        if (c, "dl") in kept:
            parts = [f"{x} {kept[(c, x)][0]:.0f}%" for x in CLAIM_METHODS if (c, x) in kept]
            out.append(f"- Lesion contrast kept in `{c}`: dl {kept[(c, 'dl')][0]:.0f}% vs " + ", ".join(parts)
                       + " (a method that regresses to the mean keeps less).")
    parts = []
    for c in check["in_distribution"] + check["ood"]:
        vals = [f"{m} {pull[(c, m)][0]:+.1f}%" for m in ("srep", "ddl", "dl") if (c, m) in pull]
        if vals:
            parts.append(f"{c}: " + ", ".join(vals))
    if parts:
        out.append("- Pull to the training mean (see above; a supervised regressor falling back to the mean "
                   "would show a larger pull than SRep/DDL out of distribution): " + "; ".join(parts) + ".")
    return out


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def _crop_box(mask2d: np.ndarray, margin: int = 3) -> tuple:
    idx = np.argwhere(mask2d)
    if not len(idx):
        return slice(None), slice(None)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask2d.shape)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


def _save_png(fig, path: Path, dpi: int = 90) -> None:
    """Save as a 192-colour palette PNG: a whole-brain slice figure of 9 columns drops from ~450 KB
    (RGBA) to ~200 KB at 90 dpi, under the 300 KB a committed figure may take, with no visible change."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    with Image.open(buf) as image:
        with atomic_path(path, ".png") as tmp:
            image.convert("RGB").quantize(colors=192).save(tmp, format="PNG", optimize=True)


def _colour(method: str):
    """One colour per method in every plot (tab10 in the study's row order)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    n = STUDY_ORDER.index(method) if method in STUDY_ORDER else len(STUDY_ORDER) + sum(map(ord, method)) % 2
    return cmap(n % 10)


def write_figures(results: dict, figure_data: dict, out_dir: Path) -> dict:
    """PNG figures (matplotlib, Agg): one per case (same coronal slice for every method, image and
    error map rows, SRep trust maps) and summary plots. Returns {key: (file name, caption)}."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figures = {}
    methods = [m["name"] for m in results["methods"]]
    for case in results["cases"]:
        fd = figure_data.get(case["name"])
        if not fd or not fd["outputs"]:
            continue
        ks, is_ = _crop_box(fd["mask"])
        truth = fd["truth"][ks, is_]
        mask = fd["mask"][ks, is_]
        mean = float(truth[mask].mean()) if mask.any() else float(truth.mean())
        vmax = float(np.percentile(truth[mask], 99.5)) if mask.any() else float(truth.max())
        cols = ["truth"] + [m for m in methods if m in fd["outputs"]]
        trust_cols = [m for m in methods if m in fd["trust"]]
        has_trust = bool(trust_cols)
        nrows = 2
        aspect = truth.shape[0] / truth.shape[1]
        cols_all = cols + [f"trust:{m}" for m in trust_cols]
        fig, axes = plt.subplots(nrows, len(cols_all), figsize=(max(1.7 * len(cols_all), 6.5), 1.75 * nrows * aspect + 0.5),
                                 squeeze=False)
        err_max = 0.3
        for n, m in enumerate(trust_cols):  # trust maps: extra columns at the right
            ax = axes[0, len(cols) + n]
            t = fd["trust"][m][ks, is_]
            top = float(np.percentile(t[mask], 99)) if mask.any() else float(t.max())
            ax.imshow(t, cmap="viridis", vmin=0, vmax=top if top > 0 else None, origin="lower",
                      interpolation="nearest")
            ax.set_title(f"{m} trust map", fontsize=8)
            axes[1, len(cols) + n].axis("off")
        for n, col in enumerate(cols):
            img = truth if col == "truth" else fd["outputs"][col][ks, is_]
            ax = axes[0, n]
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, origin="lower", interpolation="nearest")
            ax.set_title(col, fontsize=8)
            ax = axes[1, n]
            if col == "truth":
                ax.axis("off")
                ax.text(0.5, 0.5, "|error| / mean\n(0 to 0.3)", ha="center", va="center", fontsize=7,
                        transform=ax.transAxes)
            else:
                err = np.abs(img - truth) / mean * mask
                ax.imshow(err, cmap="magma", vmin=0, vmax=err_max, origin="lower", interpolation="nearest")
                ax.set_xlabel(f"slice NRMSE {np.sqrt(np.mean((img - truth)[mask] ** 2)) / mean:.3f}", fontsize=7)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{case['title']} — coronal slice j={fd['j']} (thick axis vertical)", fontsize=9)
        fig.tight_layout()
        name = f"case_{case['name']}.png"
        _save_png(fig, out_dir / name, dpi=90)
        plt.close(fig)
        figures[f"case_{case['name']}"] = (name, f"{case['title']}: truth, every method, error maps"
                                           + (" and the SRep trust map" if has_trust else ""))

    nrmse = aggregate(results["records"], "nrmse")
    case_names = [c["name"] for c in results["cases"]]
    if nrmse:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(case_names) + 2), 3.6))
        width = 0.8 / max(len(methods), 1)
        for n, m in enumerate(methods):
            vals = [nrmse.get((c, m), (np.nan,))[0] for c in case_names]
            ax.bar(np.arange(len(case_names)) + (n - (len(methods) - 1) / 2) * width, vals, width, label=m,
                   color=_colour(m))
        ax.set_xticks(np.arange(len(case_names)))
        ax.set_xticklabels(case_names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("NRMSE in brain")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        _save_png(fig, out_dir / "summary_nrmse.png")
        plt.close(fig)
        figures["summary_nrmse"] = ("summary_nrmse.png", "NRMSE per case and method")

    if BASELINE in methods:
        others = [m for m in methods if m in ("srep", "ddl", "dl", "forest")]
        if others:
            fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(case_names) + 2), 3.4))
            width = 0.8 / len(others)
            for n, m in enumerate(others):
                vals = [gain(nrmse, c, m, BASELINE) for c in case_names]
                vals = [np.nan if v is None else v for v in vals]
                ax.bar(np.arange(len(case_names)) + (n - (len(others) - 1) / 2) * width, vals, width, label=m,
                       color=_colour(m))
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xticks(np.arange(len(case_names)))
            ax.set_xticklabels(case_names, rotation=20, ha="right", fontsize=8)
            ax.set_ylabel("% lower NRMSE than linear")
            ax.legend(fontsize=7)
            fig.tight_layout()
            _save_png(fig, out_dir / "gain_over_linear.png")
            plt.close(fig)
            figures["gain_over_linear"] = ("gain_over_linear.png", "Gain over linear regression per case")

    if results["lesions"]:
        rows = results["lesions"]
        factors = sorted({r["factor"] for r in rows})
        fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors), 3.3), squeeze=False)
        for ax, f in zip(axes[0], factors):
            for m in methods:
                by_r = {}
                for r in rows:
                    if r["method"] == m and r["factor"] == f and math.isfinite(r["kept"]):
                        by_r.setdefault(r["radius_mm"], []).append(r["kept"])
                if by_r:
                    radii = sorted(by_r)
                    ax.plot(radii, [np.mean(by_r[r]) for r in radii], marker="o", label=m, color=_colour(m))
            ax.axhline(100, color="k", lw=0.8, ls="--")
            ax.set_xlabel("lesion radius (mm)")
            ax.set_ylabel("contrast kept (%)")
            ax.set_title(("hypo" if f < 1 else "hyper") + f"-intense lesions (×{f:g} WM)", fontsize=9)
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        _save_png(fig, out_dir / "lesion_contrast.png")
        plt.close(fig)
        figures["lesion_contrast"] = ("lesion_contrast.png", "Lesion contrast kept vs lesion size")
    return figures


# ---------------------------------------------------------------------------------------------
# command line: iqt-enhance benchmark quality
# ---------------------------------------------------------------------------------------------
def register(subparsers) -> None:
    """Add ``benchmark quality`` to the CLI's sub-commands (called by :mod:`.cli`)."""
    existing = getattr(subparsers, "choices", {}).get("benchmark")
    if existing is not None:  # another module made `benchmark` already: add `quality` to it
        inner = next((a for a in existing._actions if a.__class__.__name__ == "_SubParsersAction"), None)
        if inner is None:
            inner = existing.add_subparsers(dest="benchmark_kind", metavar="KIND")
    else:
        parser = subparsers.add_parser("benchmark", help="benchmarks (quality: the in/out-of-distribution study)",
                                       description="Benchmarks of the methods.")
        inner = parser.add_subparsers(dest="benchmark_kind", metavar="KIND")
        parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    q = inner.add_parser(
        "quality", help="every method in and out of the training distribution, with a report",
        description="Evaluate every available method (shipped default models) on in-distribution and "
                    "out-of-distribution cases; write README.md, PNG figures and results.json to --out.")
    q.add_argument("--full", action="store_true", help="three noise seeds and a thicker-slice case (slower)")
    q.add_argument("--out", type=Path, default=Path("benchmark-results"), help="results folder (default: %(default)s)")
    q.add_argument("--methods", nargs="+", metavar="METHOD", help="methods to evaluate (default: all available)")
    q.add_argument("--cases", nargs="+", metavar="CASE",
                   help="cases to run (default: all): " + ", ".join(c.name for c in default_cases(True)))
    q.add_argument("--model", action="append", default=[], metavar="METHOD=PATH",
                   help="use this model file instead of the method's shipped default (repeatable)")
    q.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="noise/lesion seeds (default: 0; --full: 0 1 2)")
    q.add_argument("--fixtures", action="store_true",
                   help="run on the small committed crops in Testing/Data (a smoke run in seconds)")
    q.add_argument("--device", default="cpu", help="auto, cpu or cuda (default: %(default)s)")
    q.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    q.add_argument("--report-only", action="store_true",
                   help="rewrite README.md (and redraw the figures) from the results already in --out; runs nothing")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    q.set_defaults(func=cli_quality)


def cli_quality(args) -> int:
    import sys

    if args.report_only:
        rerender(args.out)
        print(f"report: {Path(args.out) / 'README.md'} (re-rendered)")
        return 0
    models = {}
    for item in args.model or []:
        if "=" not in item:
            raise InputError(f"--model takes METHOD=PATH (got {item!r})")
        method, path = item.split("=", 1)
        models[method.strip()] = Path(path)
    cases = fixture_cases() if args.fixtures else default_cases(args.full)
    if args.cases:
        known = {c.name: c for c in (fixture_cases() if args.fixtures else default_cases(True))}
        bad = [c for c in args.cases if c not in known]
        if bad:
            raise InputError(f"unknown case(s) {', '.join(bad)}; choose from {', '.join(known)}")
        cases = [known[c] for c in args.cases]
    seeds = tuple(args.seeds) if args.seeds else ((0, 1, 2) if args.full else (0,))
    command = "iqt-enhance benchmark quality" + (" --full" if args.full else "") + (" --fixtures" if args.fixtures else "")
    config = StudyConfig(out_dir=args.out, cases=cases, methods=args.methods, models=models, seeds=seeds,
                         device=args.device, fixtures=args.fixtures, figures=not args.no_figures, command=command)

    from . import cli

    def log(message):
        if not args.quiet:
            print(message, flush=True)

    progress = cli.progress_for(args, "benchmark")
    try:
        results = run_study(config, progress=progress, cancel=cli.cancel_requested, log=log)
    finally:
        progress.close()
    print(f"report: {Path(args.out) / 'README.md'} ({results['seconds'] / 60:.1f} min)", file=sys.stdout)
    if results["missing"]:
        print("not evaluated: " + ", ".join(f"{k} ({v})" for k, v in results["missing"].items()), file=sys.stderr)
    return 0
