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
from ..simulate import ParameterRanges, degrade_array, sample_parameters, tissue_memberships
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

    def __init__(self, pairs, patch: tuple, validation_fraction: float, seed: int, reporter=None):
        self.pairs = pairs
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
        """(components, component means, scale sample, HQ, LQ brain mask, LQ validation mask, params)."""
        f = self.factor
        params = self._parameters(axis, rng)
        ax = array_axis(axis)
        hq = self.pairs.hq[v]
        index = [slice(None)] * 3
        index[ax] = slice(0, hq.shape[ax] // f * f)
        index = tuple(index)
        hq, mask, val = hq[index], self.pairs.masks[v][index], self.val_masks[v][index]
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
        means = components[:, lq_mask].mean(axis=1) if lq_mask.any() else components.reshape(len(parts), -1).mean(axis=1)
        flat = components.reshape(len(parts), -1)
        picks = rng.choice(flat.shape[1], size=min(self.SCALE_SAMPLE, flat.shape[1]), replace=False)
        record = params.to_dict()
        record.update(contrast="per patch", snr="per patch")
        return components, means.astype(np.float32), flat[:, picks].copy(), canon(hq).astype(np.float32), \
            lq_mask, lq_val, record

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
        # "dilated brain mask": any patch with >= 10% brain, none touching a validation cube
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
        mask = self.pairs.masks[v]
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


def train_network(method: str, pairs, settings: TrainSettings, reporter, device: str) -> tuple:
    """Train and return (network on the CPU, record dict for the model file's provenance)."""
    import torch

    from .architectures import build_network, contiguous_state, count_parameters, use_channels_last
    from .serialization import architecture_params, load_checkpoint, load_state, save_checkpoint

    s = settings.resolved(device)
    f = pairs.factor
    patch = (int(s.patch_thick), int(s.patch_inplane), int(s.patch_inplane))
    seed = int(pairs.seed)
    previous_threads = torch.get_num_threads()
    if s.threads > 0:
        torch.set_num_threads(int(s.threads))
    threads_used = torch.get_num_threads()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arch = architecture_params(method, f, s.base_filters, s.levels, s.atoms, s.atom_size)
    net = use_channels_last(build_network(method, f, s.base_filters, s.levels, s.atoms, s.atom_size).to(device),
                            device)
    optimizer = torch.optim.Adam(net.parameters(), lr=s.lr)
    loss_fn = torch.nn.functional.mse_loss if s.loss == "mse" else torch.nn.functional.l1_loss
    checkpoint = Path(s.checkpoint_dir) / f"{method}_last.pt" if s.checkpoint_dir else None
    step, elapsed, history, val_history, patches_seen, resumed_from = 0, 0.0, [], [], 0, None
    best = {"loss": math.inf, "step": 0, "state": None}
    if s.resume and checkpoint is not None and checkpoint.exists():
        payload = load_checkpoint(checkpoint, method, arch)
        load_state(net, payload["model"], checkpoint.name)
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ModelError(f"{checkpoint.name}: the optimiser state does not fit ({exc})") from None
        step, elapsed = int(payload["step"]), float(payload["elapsed"])
        history, val_history = list(payload["history"]), list(payload["val_history"])
        patches_seen = int(payload.get("patches_seen", step * s.batch))
        if payload.get("best_state") is not None:
            best = {"loss": float(payload["best_loss"]), "step": int(payload["best_step"]),
                    "state": payload["best_state"]}
        _set_rng_state(rng, payload["rng"])
        torch.set_rng_state(payload["torch_rng"])
        resumed_from = {"step": step, "elapsed_s": round(elapsed, 1)}

    def save():
        if checkpoint is None:
            return
        save_checkpoint(checkpoint, {
            "method": method, "arch": arch, "model": contiguous_state(net),
            "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed, "history": history,
            "val_history": val_history, "patches_seen": patches_seen, "rng": _rng_state(rng),
            "torch_rng": torch.get_rng_state(), "settings": dataclasses.asdict(s),
            "best_loss": best["loss"], "best_step": best["step"], "best_state": best["state"],
        })

    setup = reporter.sub(0.0, 0.05, "preparing simulation")
    train_rep = reporter.sub(0.05, 1.0, f"training {method}")
    setup(0.0, "simulating training volumes", force=True)
    pool_builder = SimulationPool(pairs, patch, s.validation_fraction, seed, reporter=setup)
    validation = pool_builder.validation_set(seed)
    pool = []
    for n in range(int(s.pool_size)):
        setup.check_cancel()
        pool.append(pool_builder.draw(rng))
        setup((n + 1) / s.pool_size, f"simulated {n + 1}/{s.pool_size} training volumes")
    val_x = val_y = None
    baseline = None
    if validation is not None:
        val_x, val_y = (torch.from_numpy(a) for a in validation)
        with torch.no_grad():
            from .architectures import upsample_linear
            baseline = float(loss_fn(upsample_linear(val_x, f), val_y))

    def validate() -> Optional[float]:
        if val_x is None:
            return None
        net.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(val_x), 8):
                xb, yb = val_x[i:i + 8].to(device), val_y[i:i + 8].to(device)
                total += float(loss_fn(net(xb), yb)) * len(xb)
        net.train()
        return total / len(val_x)

    def record_validation():
        v = validate()
        if v is None:
            return
        val_history.append([step, round(elapsed, 1), v, v / baseline if baseline else None])
        if v < best["loss"]:
            best.update(loss=v, step=step, state={k: t.clone() for k, t in contiguous_state(net).items()})

    def progress_of(step_: int, elapsed_: float) -> float:
        p = 0.0
        if s.steps > 0:
            p = max(p, step_ / s.steps)
        if s.minutes > 0:
            p = max(p, elapsed_ / (60.0 * s.minutes))
        return p

    net.train()
    started = time.perf_counter() - elapsed
    running, running_n, grad_norms = 0.0, 0, []
    log_every = 20
    try:
        while progress_of(step, elapsed) < 1.0:
            if step > 0 and step % s.refresh_every == 0:
                pool[step // s.refresh_every % len(pool)] = pool_builder.draw(rng)
            x, y = make_batch(pool, s, patch, f, rng, pool_builder)
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(s.lr, progress_of(step, elapsed))
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # clipping: one odd batch (bright vessels, an extreme contrast and SNR draw) must not throw
            # the unnormalised network off; the median norms are logged in the loss history
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), s.clip if s.clip > 0 else math.inf)))
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ModelError(f"training diverged at step {step} (loss {value}); lower lr")
            step += 1
            patches_seen += s.batch
            elapsed = time.perf_counter() - started
            running, running_n = running + value, running_n + 1
            if step % log_every == 0:
                history.append([step, round(elapsed, 1), running / running_n, float(np.median(grad_norms))])
                running, running_n, grad_norms = 0.0, 0, []
            if step % s.validation_every == 0:
                record_validation()
            if step % s.checkpoint_every == 0:
                save()
            last_val = f", validation {val_history[-1][3]:.3f}× interpolation" if val_history else ""
            train_rep(progress_of(step, elapsed), f"step {step}, loss {value:.2e}{last_val}")
    except CancelledError:
        save()   # a cancelled training can be resumed
        raise
    finally:
        if s.threads > 0:
            torch.set_num_threads(previous_threads)
    if running_n:
        history.append([step, round(elapsed, 1), running / running_n, float(np.median(grad_norms))])
    if not val_history or val_history[-1][0] != step:
        record_validation()
    save()
    if best["state"] is not None and best["step"] != step:
        # the weights with the lowest validation loss, not necessarily the last ones
        net.load_state_dict(best["state"])
    net = net.cpu().eval()
    record = {
        "device": device, "torch_version": torch.__version__, "threads": threads_used,
        "steps": step, "patches_seen": patches_seen, "wall_seconds": round(elapsed, 1),
        "patches_per_second": round(patches_seen / max(elapsed, 1e-9), 2),
        "parameters": count_parameters(net), "settings": dataclasses.asdict(s),
        "loss_history": history, "validation_history": val_history,
        "validation_interpolation_loss": baseline,
        "selected_step": best["step"] if best["state"] is not None else step,
        "validation_patches": 0 if val_x is None else int(len(val_x)),
        "validation_cubes": [[list(c) for c in cubes] for cubes in pool_builder.val_cubes],
        "resumed_from": resumed_from,
    }
    return net, arch, record
