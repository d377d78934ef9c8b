"""Training data for IQT-DL and IQT-DDL: simulated LQ volumes pooled contrast- and noise-free,
patches with their own contrast, SNR and noise, augmentation, and the held-out validation cubes.

Data (:class:`SimulationPool`): a small pool of simulated LQ volumes (random thick axis and slice
thickness, :mod:`..training`'s ranges), one of them re-drawn every ``refresh_every`` steps, kept
*before* contrast and noise: blur and down-sampling are linear, so the LQ of HQ·(Σ_c f_c p_c) is
Σ_c f_c blur(HQ·p_c) with p_c the tissue memberships of the simulator's contrast model.  Every
patch then gets its **own contrast draw, SNR draw and Rician noise** at no cost, with the arithmetic
of :func:`..simulate.degrade_array` and the intensity scale of the whole noisy LQ volume
(estimated on 100k voxels), as :func:`..training.TrainingPairs.realize` would give.

Why per patch: with one contrast draw per pooled volume, the first full-brain trainings chased
the contrast of the volumes in the pool.  At ±15% per tissue class, 36-44% of the interpolation's
error on validation patches is a per-patch intensity offset from the contrast draw; the validation
loss swung between 0.54× and 1.04× the interpolation's, and the weights of the best validation
step were 1.5× worse than interpolation on contrast-free data.  The tissue memberships (a k-means
costing 6.9 s of the 7.3 s a whole-brain simulation takes on 2 cores) are computed once per volume.

Validation: cubes of the HQ volumes (``validation_fraction`` of the head or brain cubes, fixed by
the seed) are held out along every axis: no training patch overlaps them, and one fixed realization
per volume and axis, with ``validation_draws`` contrast/noise draws per cube, gives the validation
patches.

Augmentation: flips along each axis (a thick-axis flip keeps LQ slabs and HQ sub-slices aligned),
in-plane transposition, and a common intensity scaling of LQ and HQ (± ``intensity_jitter``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from ..errors import InputError
from ..normalize import intensity_scale, to_canonical
from ..patches import window_sums
from ..simulate import ParameterRanges, degrade_array, foreground_mask, sample_parameters, tissue_memberships
from ..volume import array_axis


@dataclasses.dataclass
class CleanRealization:
    """One slice-thickness draw along one axis, noise- and contrast-free: the blurred, down-sampled
    HQ·p_c for each tissue class c (canonical frame, unnormalised).  Since blur and down-sampling
    are linear, the LQ of any contrast draw (f_c) is Σ_c f_c · components[c]: contrast and noise are
    drawn per patch at no cost."""

    components: np.ndarray    # [C, M, a, b] float32
    means: np.ndarray         # [C] mean of each component in the LQ brain mask (noise level)
    sample: np.ndarray        # [C, n] component values at random voxels (intensity scale)
    hq: np.ndarray            # [M*f, a, b] float32, unnormalised
    corners: np.ndarray       # flat indices of allowed training-patch corners
    valid_shape: tuple        # shape of the corner grid
    axis: str
    params: dict


@dataclasses.dataclass
class Draw:
    contrast: np.ndarray      # [C] factors (C = 1: no contrast change)
    snr: Optional[float]


class SimulationPool:
    """Contrast- and noise-free simulated LQ volumes; patches get their own contrast and noise draw."""

    SCALE_SAMPLE = 100_000    # voxels for the intensity scale (p99 of 100k voxels: within ~0.5%)

    def __init__(self, pairs, patch: tuple, validation_fraction: float, seed: int, reporter=None,
                 region: str = "brain"):
        self.pairs = pairs
        # where training patches and validation cubes may lie: around the brain mask, or anywhere in
        # the head (scalp, skull, neck: a whole-head scan has them, and a network never shown them
        # is free to do anything there while its brain-only validation looks fine)
        self.regions = [m if region == "brain" else (foreground_mask(h) | m) for h, m in zip(pairs.hq, pairs.masks)]
        self.factor = pairs.factor
        self.patch = tuple(int(p) for p in patch)          # LQ patch (thick, a, b)
        self.hq_patch = (self.patch[0] * self.factor,) + self.patch[1:]
        self._memberships = {}
        self.reporter = reporter
        sim = pairs.simulation
        self.stochastic = isinstance(sim, ParameterRanges)
        self.contrast_varies = (not self.stochastic and any(abs(c - 1.0) > 1e-12 for c in sim.contrast)) or (
            self.stochastic and tuple(sim.contrast) != (1.0, 1.0))
        self.val_cubes = [self._validation_cubes(v, validation_fraction, seed) for v in range(len(pairs.hq))]
        self.val_masks = [self._validation_mask(v) for v in range(len(pairs.hq))]

    # -- simulation -----------------------------------------------------------------------
    def _tissue(self, v: int) -> np.ndarray:
        if v not in self._memberships:
            if self.reporter is not None:
                self.reporter(0.0, f"estimating tissue classes of training volume {v + 1}", force=True)
            self._memberships[v] = tissue_memberships(self.pairs.hq[v], self.pairs.masks[v])
        return self._memberships[v]

    def _parameters(self, axis: str, rng: np.random.Generator):
        sim = self.pairs.simulation
        if self.stochastic:
            return sample_parameters(self.factor, axis, rng, sim)
        return dataclasses.replace(sim, factor=self.factor, axis=axis,
                                   seed=int(rng.integers(0, 2**31 - 1))).validate()

    def draw_contrast_noise(self, rng: np.random.Generator) -> Draw:
        sim = self.pairs.simulation
        if self.stochastic:
            if self.contrast_varies:
                contrast = rng.uniform(*sim.contrast, size=3)
                # relative to the brightest class: the intensity normalisation divides any global factor
                # out of the LQ, so (f_d, f_m, f_b) and (f_d, f_m, f_b)/f_b give the *same* network input,
                # but the target HQ / LQ-scale would carry an unknowable factor 1/f_b (±15%): on
                # validation patches 36-44% of the interpolation's error, a floor no method can learn
                # (IQT-DL trained 20 min stalled at 0.86× the interpolation's validation loss, Colin27
                # NRMSE 0.0652).  The set of relative contrasts drawn is the simulator's.
                contrast = contrast / contrast[2]
            else:
                contrast = np.ones(1)
            return Draw(contrast.astype(np.float32), float(rng.uniform(*sim.snr)))
        contrast = np.asarray(sim.contrast if self.contrast_varies else (1.0,), dtype=np.float32)
        snr = sim.snr if sim.snr is not None and math.isfinite(sim.snr) else None
        return Draw(contrast, snr)

    def realize(self, v: int, axis: str, rng: np.random.Generator) -> tuple:
        """(components, component means, scale sample, HQ, LQ patch region, LQ validation mask, params)."""
        f = self.factor
        params = self._parameters(axis, rng)
        ax = array_axis(axis)
        hq = self.pairs.hq[v]
        index = [slice(None)] * 3
        index[ax] = slice(0, hq.shape[ax] // f * f)
        index = tuple(index)
        hq, mask, val = hq[index], self.pairs.masks[v][index], self.val_masks[v][index]
        region = self.regions[v][index]
        blur_only = dataclasses.replace(params, contrast=(1.0, 1.0, 1.0), snr=None)
        if self.contrast_varies:
            tissue = self._tissue(v)
            parts = [hq * tissue[(c,) + index] for c in range(3)]
        else:
            parts = [hq]
        canon = lambda a: np.ascontiguousarray(to_canonical(a, ax))  # noqa: E731
        components = np.stack([canon(degrade_array(part, blur_only, mask)) for part in parts]).astype(np.float32)
        hq_mask = canon(mask)
        lq_mask = hq_mask.reshape(hq_mask.shape[0] // f, f, *hq_mask.shape[1:]).mean(axis=1) > 0.5
        hq_val = canon(val)
        lq_val = hq_val.reshape(hq_val.shape[0] // f, f, *hq_val.shape[1:]).any(axis=1)
        hq_region = canon(region)
        lq_region = hq_region.reshape(hq_region.shape[0] // f, f, *hq_region.shape[1:]).mean(axis=1) > 0.5
        means = components[:, lq_mask].mean(axis=1) if lq_mask.any() else components.reshape(len(parts), -1).mean(axis=1)
        flat = components.reshape(len(parts), -1)
        picks = rng.choice(flat.shape[1], size=min(self.SCALE_SAMPLE, flat.shape[1]), replace=False)
        record = params.to_dict()
        record.update(contrast="per patch", snr="per patch")
        return components, means.astype(np.float32), flat[:, picks].copy(), canon(hq).astype(np.float32), \
            lq_region, lq_val, record

    @staticmethod
    def lq_patch(components, means, sample, draw: Draw, region, rng: np.random.Generator) -> tuple:
        """(noisy LQ patch, scale) for one contrast/noise draw: the simulator's arithmetic, with the
        intensity scale of the whole noisy LQ volume estimated on the scale sample."""
        clean = np.tensordot(draw.contrast, components[(slice(None),) + region], axes=1)
        values = np.tensordot(draw.contrast, sample, axes=1)
        if draw.snr is not None:
            sigma = float(np.dot(draw.contrast, means)) / draw.snr
            clean = _rician(clean, sigma, rng)
            values = _rician(values, sigma, rng)
        return clean.astype(np.float32), np.float32(intensity_scale(values))

    def draw(self, rng: np.random.Generator) -> CleanRealization:
        v = int(rng.integers(len(self.pairs.hq)))
        axis = self.pairs.axes[int(rng.integers(len(self.pairs.axes)))]
        components, means, sample, hq, lq_mask, lq_val, params = self.realize(v, axis, rng)
        if any(s < p for s, p in zip(components.shape[1:], self.patch)):
            raise InputError(f"training volume {v + 1} along {axis} has {components.shape[1:]} LQ voxels, smaller "
                             f"than the training patch {self.patch}; choose smaller patch_thick / patch_inplane")
        volume = float(np.prod(self.patch))
        brain = window_sums(lq_mask.astype(np.float32), self.patch) / volume
        held_out = window_sums(lq_val.astype(np.float32), self.patch)
        # any patch with >= 10% in the region (brain or head), none touching a validation cube
        allowed = (brain >= 0.1) & (held_out < 0.5)
        if not allowed.any():
            allowed = held_out < 0.5
        if not allowed.any():
            raise InputError("no training patch fits outside the validation region; lower validation_fraction")
        return CleanRealization(components, means, sample, hq, np.flatnonzero(allowed), allowed.shape, axis, params)

    # -- validation ----------------------------------------------------------------------------
    def cube_size(self) -> int:
        c = max(self.patch[1], self.patch[2], self.hq_patch[0])
        return int(math.ceil(c / self.factor) * self.factor)


    def _validation_cubes(self, v: int, fraction: float, seed: int) -> list:
        if fraction <= 0:
            return []
        c = self.cube_size()
        mask = self.regions[v]
        grid = [s // c for s in mask.shape]
        cubes = [(a * c, b * c, d * c) for a in range(grid[0]) for b in range(grid[1]) for d in range(grid[2])
                 if mask[a * c:(a + 1) * c, b * c:(b + 1) * c, d * c:(d + 1) * c].mean() >= 0.5]
        if len(cubes) < 2:
            return []
        rng = np.random.default_rng([seed, 7919, v])
        n = max(1, int(round(fraction * len(cubes))))
        return [cubes[i] for i in sorted(rng.choice(len(cubes), size=n, replace=False))]

    def _validation_mask(self, v: int) -> np.ndarray:
        out = np.zeros(self.pairs.hq[v].shape, dtype=bool)
        c = self.cube_size()
        for a, b, d in self.val_cubes[v]:
            out[a:a + c, b:b + c, d:d + c] = True
        return out

    def validation_set(self, seed: int, draws_per_cube: int = 2):
        """Fixed (LQ, HQ) validation patches [n, 1, ...]: every held-out cube along every axis, each
        with ``draws_per_cube`` contrast/noise draws (the loss averages over the simulator's range)."""
        xs, ys = [], []
        for v, cubes in enumerate(self.val_cubes):
            if not cubes:
                continue
            for n_axis, axis in enumerate(self.pairs.axes):
                rng = np.random.default_rng([seed, 104729, v, n_axis])
                components, means, sample, hq, _m, _val, _p = self.realize(v, axis, rng)
                ax = array_axis(axis)
                order = [ax] + [a for a in range(3) if a != ax]
                for cube in cubes:
                    t, a, b = (cube[o] for o in order)
                    t //= self.factor
                    region = (slice(t, t + self.patch[0]), slice(a, a + self.patch[1]), slice(b, b + self.patch[2]))
                    for _ in range(draws_per_cube):
                        x, scale = self.lq_patch(components, means, sample, self.draw_contrast_noise(rng), region, rng)
                        xs.append(x / scale)
                        ys.append(hq[t * self.factor:t * self.factor + self.hq_patch[0], a:a + self.patch[1],
                                     b:b + self.patch[2]] / scale)
        if not xs:
            return None
        return np.stack(xs)[:, None].astype(np.float32), np.stack(ys)[:, None].astype(np.float32)


def _rician(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    n1 = rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
    n2 = rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
    return np.sqrt((x + n1) ** 2 + n2 ** 2)


def make_batch(pool: list, settings, patch: tuple, factor: int, rng: np.random.Generator,
               builder: SimulationPool):
    """A batch of (noisy LQ, HQ) patches [B, 1, ...]: each patch its own contrast, SNR and noise, then
    augmentation."""
    hq_patch = (patch[0] * factor,) + tuple(patch[1:])
    xs, ys = [], []
    for _ in range(settings.batch):
        real = pool[int(rng.integers(len(pool)))]
        t, a, b = np.unravel_index(real.corners[int(rng.integers(real.corners.size))], real.valid_shape)
        region = (slice(t, t + patch[0]), slice(a, a + patch[1]), slice(b, b + patch[2]))
        x, scale = builder.lq_patch(real.components, real.means, real.sample, builder.draw_contrast_noise(rng),
                                    region, rng)
        x = x / scale
        y = real.hq[t * factor:t * factor + hq_patch[0], a:a + patch[1], b:b + patch[2]] / scale
        if settings.flips:
            for axis in range(3):
                if rng.random() < 0.5:
                    x, y = np.flip(x, axis), np.flip(y, axis)
            if patch[1] == patch[2] and rng.random() < 0.5:
                x, y = x.swapaxes(1, 2), y.swapaxes(1, 2)
        if settings.intensity_jitter > 0:
            gain = np.float32(1.0 + settings.intensity_jitter * rng.uniform(-1.0, 1.0))
            x, y = x * gain, y * gain
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return np.stack(xs)[:, None].astype(np.float32), np.stack(ys)[:, None].astype(np.float32)
