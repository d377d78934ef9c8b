"""The study's cases: which brain, which simulation, in or out of the training distribution, and
synthetic lesions inserted into the HQ before simulation.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import numpy as np
from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.grid import crop_to_whole_slabs
from IQTEnhanceLib.simulate import (
    ParameterRanges,
    SimulationParameters,
    simulate,
    tissue_memberships,
)
from IQTEnhanceLib.volume import Volume

TRAINING_DATASET = "icbm2009c_t1"


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
    lowfield: Optional[tuple] = None       # (GM/WM loss, GM/CSF loss, WM SNR): the low-field T1w model

    @property
    def ood(self) -> bool:
        return self.group != "in distribution"

    def simulation(self, factor: int, axis: str, seed: int, hq=None, mask=None) -> SimulationParameters:
        """The case's simulation; a low-field case needs the HQ and its mask (its tissue factors and
        SNR are set from the tissue classes, see IQTEnhanceLib/lowfield.py)."""
        if self.lowfield is not None:
            from IQTEnhanceLib.lowfield import LowFieldContrast, lowfield_parameters

            params, _record = lowfield_parameters(hq, mask, LowFieldContrast(*self.lowfield), factor, axis,
                                                  seed=seed, thickness=self.thickness)
            return params
        return SimulationParameters(factor=factor, axis=axis, snr=self.snr, contrast=tuple(self.contrast),
                                    thickness=self.thickness, seed=seed).validate()

    def describe(self, factor: int) -> str:
        if self.lowfield is not None:
            gm_wm, csf_gm, snr_wm = self.lowfield
            return (f"{self.dataset}, ×{factor}, low-field T1w: GM/WM difference −{100 * gm_wm:.0f}%, GM/CSF "
                    f"−{100 * csf_gm:.0f}%, WM SNR {snr_wm:g}")
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
    if case.lowfield is not None:
        return False     # no shipped model was trained with the low-field tissue model
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
        Case("ood_lowfield", "OOD: low-field-like T1w (GM/WM −50%, WM SNR 8)", "out of distribution", "colin27_t1",
             lowfield=(0.5, 0.3, 8.0),
             note="the IQT task itself: a 0.3-0.5 T-like LQ (GM/WM and GM/CSF differences reduced, low SNR, "
                  "IQTEnhanceLib/lowfield.py) in, the 3 T-like HQ out; at the far end of the model's ranges "
                  "and outside every shipped model's training"),
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
    from IQTEnhanceLib import data

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
    lq, record = simulate(image, case.simulation(factor, axis, seed, image.array, mask.array > 0), mask=mask)
    return CaseData(case, seed, image, mask.array > 0, lq, record, lesion_index, lesions)
