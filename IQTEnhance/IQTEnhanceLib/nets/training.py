"""Training IQT-DL and IQT-DDL: stochastic LQ simulation on the fly, augmentation, a spatially held-out
validation set, checkpoints and resume.

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

Validation: cubes of the HQ volumes (``validation_fraction`` of the brain cubes, fixed by the seed)
are held out along every axis: no training patch overlaps them, and one fixed realization per
volume and axis, with two fixed contrast/noise draws per cube, gives the validation patches.  The validation loss is reported beside the
linear interpolation's loss on the same patches (ratio < 1: the network beats interpolation).

Augmentation: flips along each axis (a thick-axis flip keeps LQ slabs and HQ sub-slices aligned),
in-plane transposition, and a common intensity scaling of LQ and HQ (± ``intensity_jitter``).

Optimiser: Adam with a short warm-up and cosine decay over the budget (minutes and/or steps,
whichever ends first), gradient-norm clipping; the returned weights are those with the lowest
validation loss (the last ones without validation).  Checkpoints (``<checkpoint_dir>/<method>_last.pt``) are written every
``checkpoint_every`` steps, at the end and on cancel; ``resume=True`` continues from it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CancelledError, InputError, ModelError
from ..normalize import intensity_scale, to_canonical
from ..patches import window_sums
from ..simulate import ParameterRanges, degrade_array, foreground_mask, sample_parameters, tissue_memberships
from ..volume import array_axis


@dataclasses.dataclass
class TrainSettings:
    minutes: float = 12.0          # wall-clock budget (0: no limit; then ``steps`` must be set)
    steps: int = 0                 # optimiser steps (0: no limit; then ``minutes`` must be set)
    patch_thick: int = 8           # LQ slices per training patch (HQ: × factor)
    patch_inplane: int = 32        # in-plane patch size (0: 32 on the CPU, 64 on CUDA)
    batch: int = 0                 # patches per step (0: 4 on the CPU, 16 on CUDA)
    base_filters: int = 0          # widths base·2^level (0: 16 on the CPU, 32 on CUDA)
    levels: int = 3
    atoms: int = 64                # DDL dictionary size K
    atom_size: int = 1             # DDL atoms' in-plane neighbourhood n (odd)
    lr: float = 1e-3
    clip: float = 1.0              # gradient-norm clipping (0: none)
    loss: str = "mse"
    validation_fraction: float = 0.1
    validation_every: int = 200
    checkpoint_dir: str = ""
    checkpoint_every: int = 200
    resume: bool = False
    device: str = "auto"
    threads: int = 0               # torch CPU threads (0: leave torch's setting)
    pool_size: int = 4
    refresh_every: int = 25
    intensity_jitter: float = 0.1
    flips: bool = True
    validation_draws: int = 4      # contrast/noise draws per held-out cube and axis
    until_converged: bool = False  # stop once validation improves < 1% over the last 20% of steps
    patch_region: str = "head"     # training patches anywhere in the head, or only around the brain mask
    generator: bool = False        # DDL: atoms from SRDD's dictionary generator
    compensation: bool = False     # DDL: SRDD's compensation branch (atoms shifted by half a block)
    logit_scale: float = 1.0       # DDL: temperature on the coefficient logits
    dictionary_lr: float = 0.0     # DDL: learning rate of the atoms (0: lr)
    atom_init: str = "random"      # DDL: "random" or "kmeans" (centroids of the training residuals)

    def resolved(self, device: str) -> "TrainSettings":
        cuda = device == "cuda"
        s = dataclasses.replace(self)
        s.patch_inplane = self.patch_inplane or (64 if cuda else 32)
        s.batch = self.batch or (16 if cuda else 4)
        s.base_filters = self.base_filters or (32 if cuda else 16)
        if s.minutes <= 0 and s.steps <= 0:
            raise InputError("training needs a budget: set minutes or steps (or both) above 0")
        for name in ("patch_thick", "patch_inplane", "batch", "base_filters", "levels", "pool_size"):
            if int(getattr(s, name)) < 1:
                raise InputError(f"{name} must be at least 1 (got {getattr(s, name)})")
        if s.patch_region not in ("head", "brain"):
            raise InputError(f"patch_region must be head or brain (got {s.patch_region!r})")
        if s.atom_init not in ("random", "kmeans"):
            raise InputError(f"atom_init must be random or kmeans (got {s.atom_init!r})")
        if s.loss not in ("mse", "l1"):
            raise InputError(f"loss must be mse or l1 (got {s.loss!r})")
        if not 0.0 <= s.validation_fraction < 0.5:
            raise InputError(f"validation_fraction must be in [0, 0.5) (got {s.validation_fraction})")
        if s.resume and not s.checkpoint_dir:
            raise InputError("resume needs a checkpoint_dir")
        return s


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

    @staticmethod
    def cube_size_for(settings: dict, factor: int) -> int:
        """The validation cube edge of a training run, from its recorded settings."""
        c = max(int(settings["patch_inplane"]), int(settings["patch_thick"]) * factor)
        return int(math.ceil(c / factor) * factor)

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


def make_batch(pool: list, settings: TrainSettings, patch: tuple, factor: int, rng: np.random.Generator,
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


def _learning_rate(base: float, progress: float) -> float:
    warmup = 0.02
    if progress < warmup:
        return base * max(progress / warmup, 0.05)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / (1.0 - warmup))))


def _rng_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)   # 128-bit ints survive as JSON text in torch.load


def _set_rng_state(rng: np.random.Generator, text: str) -> None:
    rng.bit_generator.state = json.loads(text)


def kmeans_atoms(pool: list, factor: int, atoms: int, rng: np.random.Generator, samples: int = 20_000,
                 iterations: int = 25) -> np.ndarray:
    """IQT-DDL atoms initialised at the k-means centroids of the training residuals (HQ block minus
    the linear up-sampling, per LQ voxel, at contrast 1 without noise), centred over the atoms: the
    softmax starts among atoms that already span the residuals instead of a random cloud of std 0.1."""
    from ..interpolation import upsample_array

    vectors = []
    per = max(1, samples // len(pool))
    for real in pool:
        lq = real.components.sum(axis=0)
        scale = intensity_scale(real.sample.sum(axis=0))
        residual = (real.hq - upsample_array(lq, factor, 0, "trilinear")) / scale
        m = lq.shape[0]
        blocks = residual[: m * factor].reshape(m, factor, *residual.shape[1:]).transpose(0, 2, 3, 1)
        blocks = blocks.reshape(-1, factor)
        busy = np.flatnonzero(np.abs(blocks).max(axis=1) > 0)
        if busy.size:
            vectors.append(blocks[rng.choice(busy, size=min(per, busy.size), replace=False)])
    data = np.concatenate(vectors).astype(np.float64)
    centres = data[rng.choice(len(data), size=atoms, replace=len(data) < atoms)].copy()
    for _ in range(iterations):
        d = (data ** 2).sum(1)[:, None] - 2.0 * data @ centres.T + (centres ** 2).sum(1)[None]
        label = d.argmin(axis=1)
        for k in range(atoms):
            members = data[label == k]
            centres[k] = members.mean(axis=0) if len(members) else data[rng.integers(len(data))]
    centres -= centres.mean(axis=0, keepdims=True)
    return centres.astype(np.float32)


def converged(val_history: list, window: float = 0.2, tolerance: float = 0.01, min_points: int = 5) -> bool:
    """True when the best validation loss of the last ``window`` of the steps run improved on the
    best before it by less than ``tolerance`` (relative): more steps at this rate buy < 1%."""
    if len(val_history) < min_points:
        return False
    last_step = val_history[-1][0]
    cut = last_step * (1.0 - window)
    before = [h[2] for h in val_history if h[0] <= cut]
    recent = [h[2] for h in val_history if h[0] > cut]
    if not before or not recent:
        return False
    return min(recent) > (1.0 - tolerance) * min(before)


class Trainer:
    """One network training: state (network, optimiser, counters, histories, best weights), one
    optimiser ``step``, ``validate``, ``checkpoint`` / ``resume``, and ``run`` to the budget."""

    LOG_EVERY = 20

    def __init__(self, method: str, pairs, settings: TrainSettings, reporter, device: str):
        import torch

        from .architectures import build_network, use_channels_last
        from .serialization import architecture_params

        self.torch = torch
        self.method, self.pairs, self.reporter, self.device = method, pairs, reporter, device
        s = self.settings = settings.resolved(device)
        if method != "ddl" and (s.generator or s.compensation or s.atom_init != "random"):
            raise InputError("generator, compensation and atom_init are IQT-DDL options")
        if s.generator and s.atom_init == "kmeans":
            raise InputError("atom_init kmeans sets free atoms; the dictionary generator makes its own")
        self.factor = pairs.factor
        self.patch = (int(s.patch_thick), int(s.patch_inplane), int(s.patch_inplane))
        self.seed = int(pairs.seed)
        self.previous_threads = torch.get_num_threads()
        if s.threads > 0:
            torch.set_num_threads(int(s.threads))
        self.threads_used = torch.get_num_threads()
        torch.manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.arch = architecture_params(method, self.factor, s.base_filters, s.levels, s.atoms, s.atom_size,
                                        0, s.generator, s.compensation, s.logit_scale)
        net = build_network(method, self.factor, s.base_filters, s.levels, s.atoms, s.atom_size, 0,
                            s.generator, s.compensation, s.logit_scale)
        self.net = use_channels_last(net.to(device), device)
        dictionary = list(self.net.dictionary_parameters()) if method == "ddl" else []
        ids = {id(p) for p in dictionary}
        groups = [{"params": [p for p in self.net.parameters() if id(p) not in ids], "base_lr": s.lr}]
        if dictionary:
            groups.append({"params": dictionary, "base_lr": s.dictionary_lr or s.lr})
        self.optimizer = torch.optim.Adam(groups, lr=s.lr)
        self.loss_fn = torch.nn.functional.mse_loss if s.loss == "mse" else torch.nn.functional.l1_loss
        self.checkpoint_path = Path(s.checkpoint_dir) / f"{method}_last.pt" if s.checkpoint_dir else None
        self.step_count, self.elapsed, self.patches_seen = 0, 0.0, 0
        self.history, self.val_history, self.resumed_from = [], [], None
        self.best_loss, self.best_step, self.best_state = math.inf, 0, None
        self.stopped_converged = False
        self.val_x = self.val_y = self.baseline = None
        self.pool_builder, self.pool = None, []

    # -- state ------------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from the checkpoint (when ``resume`` is set and one exists)."""
        from .serialization import load_checkpoint, load_state

        s, path = self.settings, self.checkpoint_path
        if not (s.resume and path is not None and path.exists()):
            return False
        payload = load_checkpoint(path, self.method, self.arch)
        load_state(self.net, payload["model"], path.name)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ModelError(f"{path.name}: the optimiser state does not fit ({exc})") from None
        self.step_count, self.elapsed = int(payload["step"]), float(payload["elapsed"])
        self.history, self.val_history = list(payload["history"]), list(payload["val_history"])
        self.patches_seen = int(payload.get("patches_seen", self.step_count * s.batch))
        if payload.get("best_state") is not None:
            self.best_loss, self.best_step = float(payload["best_loss"]), int(payload["best_step"])
            self.best_state = payload["best_state"]
        _set_rng_state(self.rng, payload["rng"])
        self.torch.set_rng_state(payload["torch_rng"])
        self.resumed_from = {"step": self.step_count, "elapsed_s": round(self.elapsed, 1)}
        return True

    def checkpoint(self) -> None:
        from .architectures import contiguous_state
        from .serialization import save_checkpoint

        if self.checkpoint_path is None:
            return
        save_checkpoint(self.checkpoint_path, {
            "method": self.method, "arch": self.arch, "model": contiguous_state(self.net),
            "optimizer": self.optimizer.state_dict(), "step": self.step_count, "elapsed": self.elapsed,
            "history": self.history, "val_history": self.val_history, "patches_seen": self.patches_seen,
            "rng": _rng_state(self.rng), "torch_rng": self.torch.get_rng_state(),
            "settings": dataclasses.asdict(self.settings), "best_loss": self.best_loss,
            "best_step": self.best_step, "best_state": self.best_state,
        })

    # -- data -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Simulation pool, fixed validation set and its interpolation baseline, atom initialisation."""
        from .architectures import upsample_linear

        s = self.settings
        setup = self.reporter.sub(0.0, 0.05, "preparing simulation")
        setup(0.0, "simulating training volumes", force=True)
        self.pool_builder = SimulationPool(self.pairs, self.patch, s.validation_fraction, self.seed,
                                           reporter=setup, region=s.patch_region)
        validation = self.pool_builder.validation_set(self.seed, draws_per_cube=s.validation_draws)
        for n in range(int(s.pool_size)):
            setup.check_cancel()
            self.pool.append(self.pool_builder.draw(self.rng))
            setup((n + 1) / s.pool_size, f"simulated {n + 1}/{s.pool_size} training volumes")
        if validation is not None:
            self.val_x, self.val_y = (self.torch.from_numpy(a) for a in validation)
            with self.torch.no_grad():
                self.baseline = float(self.loss_fn(upsample_linear(self.val_x, self.factor), self.val_y))
        if s.atom_init == "kmeans" and self.step_count == 0:
            setup(1.0, "initialising the atoms at the k-means centroids of the training residuals", force=True)
            centres = kmeans_atoms(self.pool, self.factor, s.atoms, np.random.default_rng([self.seed, 17]))
            with self.torch.no_grad():
                shape = self.net.dictionary.shape
                self.net.dictionary.copy_(self.torch.from_numpy(centres).reshape(s.atoms, self.factor, 1, 1)
                                          .expand(shape).contiguous() / (shape[2] * shape[3]))

    # -- steps ------------------------------------------------------------------------------------
    def progress(self) -> float:
        s, p = self.settings, 0.0
        if s.steps > 0:
            p = max(p, self.step_count / s.steps)
        if s.minutes > 0:
            p = max(p, self.elapsed / (60.0 * s.minutes))
        return p

    def step(self) -> float:
        """One optimiser step on a fresh batch; returns its loss and the gradient norm."""
        torch, s = self.torch, self.settings
        if self.step_count > 0 and self.step_count % s.refresh_every == 0:
            self.pool[self.step_count // s.refresh_every % len(self.pool)] = self.pool_builder.draw(self.rng)
        x, y = make_batch(self.pool, s, self.patch, self.factor, self.rng, self.pool_builder)
        x, y = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)
        fraction = self.progress()
        for group in self.optimizer.param_groups:
            group["lr"] = _learning_rate(group["base_lr"], fraction)
        loss = self.loss_fn(self.net(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # clipping: one odd batch (bright vessels, an extreme contrast and SNR draw) must not throw
        # the unnormalised network off; the median norms are logged in the loss history
        norm = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), s.clip if s.clip > 0 else math.inf))
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ModelError(f"training diverged at step {self.step_count} (loss {value}); lower lr")
        self.step_count += 1
        self.patches_seen += s.batch
        return value, norm

    def validate(self) -> Optional[float]:
        """Loss on the fixed validation patches (None without validation); keeps the best weights."""
        from .architectures import contiguous_state

        if self.val_x is None:
            return None
        self.net.eval()
        total = 0.0
        with self.torch.no_grad():
            for i in range(0, len(self.val_x), 16):
                xb, yb = self.val_x[i:i + 16].to(self.device), self.val_y[i:i + 16].to(self.device)
                total += float(self.loss_fn(self.net(xb), yb)) * len(xb)
        self.net.train()
        v = total / len(self.val_x)
        self.val_history.append([self.step_count, round(self.elapsed, 1), v, v / self.baseline if self.baseline else None])
        if v < self.best_loss:
            self.best_loss, self.best_step = v, self.step_count
            self.best_state = {k: t.clone() for k, t in contiguous_state(self.net).items()}
        return v

    def run(self) -> None:
        """Train to the budget (or to convergence with ``until_converged``), checkpointing on the way
        and on cancel; ends with the best validated weights loaded."""
        s = self.settings
        self.resume()
        self.prepare()
        train_rep = self.reporter.sub(0.05, 1.0, f"training {self.method}")
        self.net.train()
        started = time.perf_counter() - self.elapsed
        running, norms = [], []
        try:
            while self.progress() < 1.0 and not self.stopped_converged:
                value, norm = self.step()
                self.elapsed = time.perf_counter() - started
                running.append(value)
                norms.append(norm)
                if self.step_count % self.LOG_EVERY == 0:
                    self._log(running, norms)
                    running, norms = [], []
                if self.step_count % s.validation_every == 0:
                    self.validate()
                    self.stopped_converged = s.until_converged and converged(self.val_history)
                if self.step_count % s.checkpoint_every == 0:
                    self.checkpoint()
                last = f", validation {self.val_history[-1][3]:.3f}× interpolation" if self.val_history and \
                    self.val_history[-1][3] is not None else ""
                train_rep(self.progress(), f"step {self.step_count}, loss {value:.2e}{last}")
        except CancelledError:
            self.checkpoint()   # a cancelled training can be resumed
            raise
        finally:
            if s.threads > 0:
                self.torch.set_num_threads(self.previous_threads)
        if running:
            self._log(running, norms)
        if not self.val_history or self.val_history[-1][0] != self.step_count:
            self.validate()
        self.checkpoint()
        if self.best_state is not None and self.best_step != self.step_count:
            # the weights with the lowest validation loss, not necessarily the last ones
            self.net.load_state_dict(self.best_state)
        self.net = self.net.cpu().eval()

    def _log(self, losses: list, norms: list) -> None:
        self.history.append([self.step_count, round(self.elapsed, 1), float(np.mean(losses)), float(np.median(norms))])

    def record(self) -> dict:
        """Provenance for the model file."""
        from .architectures import count_parameters

        return {
            "device": self.device, "torch_version": self.torch.__version__, "threads": self.threads_used,
            "steps": self.step_count, "patches_seen": self.patches_seen, "wall_seconds": round(self.elapsed, 1),
            "patches_per_second": round(self.patches_seen / max(self.elapsed, 1e-9), 2),
            "parameters": count_parameters(self.net), "settings": dataclasses.asdict(self.settings),
            "loss_history": self.history, "validation_history": self.val_history,
            "validation_interpolation_loss": self.baseline,
            "selected_step": self.best_step if self.best_state is not None else self.step_count,
            "validation_patches": 0 if self.val_x is None else int(len(self.val_x)),
            "validation_cubes": [[list(c) for c in cubes] for cubes in self.pool_builder.val_cubes],
            "resumed_from": self.resumed_from,
            "converged": converged(self.val_history) if self.val_history else None,
            "stopped_at_convergence": self.stopped_converged,
        }


def train_network(method: str, pairs, settings: TrainSettings, reporter, device: str) -> tuple:
    """Train and return (network on the CPU, architecture params, record dict for the model file)."""
    trainer = Trainer(method, pairs, settings, reporter, device)
    trainer.run()
    return trainer.net, trainer.arch, trainer.record()
