"""Training IQT-DL and IQT-DDL (:class:`Trainer`): the data of :mod:`.training_data`, Adam with a
short warm-up and cosine decay over the budget (minutes and/or steps, whichever ends first),
gradient-norm clipping, validation on the held-out patches (reported beside the linear
interpolation's loss: ratio < 1 means the network beats interpolation), checkpoints and resume.

The returned weights are those with the lowest validation loss (the last ones without validation).
With ``weight_average`` the network validated, selected and returned is an exponential moving average
of the trained weights (Polyak averaging): the last steps' noise averages out.
Checkpoints (``<checkpoint_dir>/<method>_last.pt``) are written every ``checkpoint_every`` steps, at
the end and on cancel; ``resume=True`` continues from it.  With ``until_converged`` training stops
once the validation loss improved < 1% over the last 20% of the steps, but never in the first half
of the budget.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CancelledError, InputError, ModelError
from ..normalize import intensity_scale
from .training_data import SimulationPool, make_batch


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
    lr: float = 5e-4
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
    intensity_jitter: float = 0.4
    flips: bool = True
    validation_draws: int = 4      # contrast/noise draws per held-out cube and axis
    until_converged: bool = False  # stop once validation improves < 1% over the last 20% of steps
    patch_region: str = "head"     # training patches anywhere in the head, or only around the brain mask
    generator: bool = False        # DDL: atoms from SRDD's dictionary generator
    compensation: bool = False     # DDL: SRDD's compensation branch (atoms shifted by half a block)
    logit_scale: float = 1.0       # DDL: temperature on the coefficient logits
    gain: str = "none"             # DDL: per-voxel gain on the softmax weights ("none", "signed", "positive")
    dictionary_lr: float = 0.0     # DDL: learning rate of the atoms (0: lr)
    atom_init: str = "random"      # DDL: "random" or "kmeans" (centroids of the training residuals)
    init_from: str = ""            # DDL: an IQT-DL model file to start from (see DeepDictionaryNet.start_from_unet)
    weight_average: float = 0.0    # decay of an exponential moving average of the weights (0: none)
    split_seed: int = -1           # seed of the held-out validation cubes and their draws (-1: the training seed)

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
        if not 0.0 <= s.weight_average < 1.0:
            raise InputError(f"weight_average must be in [0, 1) (got {s.weight_average})")
        if s.resume and not s.checkpoint_dir:
            raise InputError("resume needs a checkpoint_dir")
        return s


def _learning_rate(base: float, progress: float) -> float:
    warmup = 0.02
    if progress < warmup:
        return base * max(progress / warmup, 0.05)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / (1.0 - warmup))))


def _rng_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)   # 128-bit ints survive as JSON text in torch.load


def _set_rng_state(rng: np.random.Generator, text: str) -> None:
    rng.bit_generator.state = json.loads(text)


def residual_blocks(pool: list, factor: int, rng: np.random.Generator, samples: int = 20_000) -> np.ndarray:
    """About ``samples`` training residuals (HQ block minus the linear up-sampling, per LQ voxel, at
    contrast 1 without noise, in normalised intensities), as rows of ``factor`` values (float64)."""
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
    return np.concatenate(vectors).astype(np.float64)


# the largest logit a DDL started from a U-Net may need, as a quantile of the training residuals: the
# first-order softmax errs by about |z|/2 of the residual (see DeepDictionaryNet.start_from_unet)
LINEAR_REGIME_LOGIT = 0.05
LINEAR_REGIME_QUANTILE = 0.999


def linear_regime_scale(atoms: np.ndarray, residuals: np.ndarray, boost: float = 1.0) -> float:
    """The factor on centred ``atoms`` (K × f) that keeps the logits reproducing the training
    ``residuals`` (N × f) below :data:`LINEAR_REGIME_LOGIT` for all but 0.1% of them."""
    d = atoms.reshape(len(atoms), -1).astype(np.float64)
    d = d - d.mean(axis=0, keepdims=True)
    gram = d.T @ d / len(d)
    logits = boost * residuals @ np.linalg.solve(gram, d.T)        # N × K
    return float(max(1.0, np.quantile(np.abs(logits), LINEAR_REGIME_QUANTILE) / LINEAR_REGIME_LOGIT))


def kmeans_atoms(pool: list, factor: int, atoms: int, rng: np.random.Generator, samples: int = 20_000,
                 iterations: int = 25) -> np.ndarray:
    """IQT-DDL atoms initialised at the k-means centroids of the training residuals (HQ block minus
    the linear up-sampling, per LQ voxel, at contrast 1 without noise), centred over the atoms: the
    softmax starts among atoms that already span the residuals instead of a random cloud of std 0.1."""
    data = residual_blocks(pool, factor, rng, samples)
    centres = data[rng.choice(len(data), size=atoms, replace=len(data) < atoms)].copy()
    for _ in range(iterations):
        d = (data ** 2).sum(1)[:, None] - 2.0 * data @ centres.T + (centres ** 2).sum(1)[None]
        label = d.argmin(axis=1)
        for k in range(atoms):
            members = data[label == k]
            centres[k] = members.mean(axis=0) if len(members) else data[rng.integers(len(data))]
    centres -= centres.mean(axis=0, keepdims=True)
    return centres.astype(np.float32)


CONVERGENCE_EARLIEST = 0.5   # fraction of the budget before which ``until_converged`` never stops


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
        if method != "ddl" and (s.generator or s.compensation or s.atom_init != "random" or s.gain != "none"
                                or s.init_from):
            raise InputError("generator, compensation, gain, atom_init and init_from are IQT-DDL options")
        if s.generator and (s.atom_init == "kmeans" or s.init_from):
            raise InputError("atom_init kmeans and init_from set free atoms; the dictionary generator makes its own")
        self.factor = pairs.factor
        self.patch = (int(s.patch_thick), int(s.patch_inplane), int(s.patch_inplane))
        self.seed = int(pairs.seed)
        self.previous_threads = torch.get_num_threads()
        if s.threads > 0:
            torch.set_num_threads(int(s.threads))
        self.threads_used = torch.get_num_threads()
        torch.manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.start_model = self._start_model() if s.init_from else None
        self.start_scale = 0.0
        # a DDL started from a U-Net passes the features through its tail as [h, -h]: twice as wide
        tail_width = 2 * s.base_filters if s.init_from else 0
        self.arch = architecture_params(method, self.factor, s.base_filters, s.levels, s.atoms, s.atom_size,
                                        tail_width, s.generator, s.compensation, s.logit_scale, s.gain)
        net = build_network(method, self.factor, s.base_filters, s.levels, s.atoms, s.atom_size, tail_width,
                            s.generator, s.compensation, s.logit_scale, s.gain)
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
        self.averaged = None   # the moving average of the weights (a copy of the network), with weight_average

    def _start_model(self):
        """The IQT-DL model file named by ``init_from``, checked against this training's network."""
        from ..models import load_model

        s = self.settings
        model = load_model(s.init_from)
        p = model.params
        if model.method != "dl":
            raise InputError(f"init_from: {model.name} is a {model.method} model; a DDL starts from an IQT-DL model")
        mine = {"factor": self.factor, "base_filters": s.base_filters, "levels": s.levels}
        theirs = {k: int(p.get(k, -1)) for k in mine}
        if theirs != mine:
            raise InputError(f"init_from: {model.name} has {theirs}, this training needs {mine}")
        return model

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
        if s.weight_average > 0 and payload.get("averaged") is not None:
            self.averaged = copy.deepcopy(self.net)
            load_state(self.averaged, payload["averaged"], path.name)
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
            "averaged": None if self.averaged is None else contiguous_state(self.averaged),
        })

    # -- data -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Simulation pool, fixed validation set and its interpolation baseline, atom initialisation."""
        from .architectures import upsample_linear

        s = self.settings
        setup = self.reporter.sub(0.0, 0.05, "preparing simulation")
        setup(0.0, "simulating training volumes", force=True)
        # the held-out cubes decide what the network trains on: with split_seed fixed, seeds differ only
        # in initialisation and draws, and their validation losses are comparable
        split = self.seed if s.split_seed < 0 else int(s.split_seed)
        self.pool_builder = SimulationPool(self.pairs, self.patch, s.validation_fraction, split,
                                           reporter=setup, region=s.patch_region)
        validation = self.pool_builder.validation_set(split, draws_per_cube=s.validation_draws)
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
        if self.start_model is not None and self.step_count == 0:
            self._start_from_unet(setup)

    def _start_from_unet(self, reporter) -> None:
        from .serialization import network_from_model

        reporter(1.0, f"starting from {self.start_model.name}", force=True)
        n = self.settings.atom_size
        atoms = self.net.dictionary.detach().cpu().numpy()[:, :, n // 2, n // 2] * n * n
        residuals = residual_blocks(self.pool, self.factor, np.random.default_rng([self.seed, 19]))
        self.start_scale = linear_regime_scale(atoms, residuals, self.net.main_boost)
        unet = network_from_model(self.start_model, self.device)
        self.net.start_from_unet(unet, self.torch.from_numpy(atoms * self.start_scale).to(self.device))

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

    def start_average(self) -> None:
        """The moving average starts as the network after ``prepare`` (which may set its atoms or start
        it from a U-Net); a resumed one continues from the checkpoint's."""
        if self.settings.weight_average > 0 and self.averaged is None:
            self.averaged = copy.deepcopy(self.net)

    def update_average(self) -> None:
        """One step of the moving average.  The decay warms up as (1 + n) / (10 + n) after n steps, so
        the average always spans about the last ~10% of the steps run, up to 1 / (1 - weight_average)."""
        n = self.step_count
        keep = min(self.settings.weight_average, (1.0 + n) / (10.0 + n))
        with self.torch.no_grad():
            for mean, weight in zip(self.averaged.parameters(), self.net.parameters()):
                mean.lerp_(weight, 1.0 - keep)
            for mean, buffer in zip(self.averaged.buffers(), self.net.buffers()):
                mean.copy_(buffer)

    @property
    def result_net(self):
        """The network that is validated and returned: the moving average when there is one."""
        return self.net if self.averaged is None else self.averaged

    def validate(self) -> Optional[float]:
        """Loss on the fixed validation patches (None without validation); keeps the best weights."""
        from .architectures import contiguous_state

        if self.val_x is None:
            return None
        net = self.result_net
        net.eval()
        total = 0.0
        with self.torch.no_grad():
            for i in range(0, len(self.val_x), 16):
                xb, yb = self.val_x[i:i + 16].to(self.device), self.val_y[i:i + 16].to(self.device)
                total += float(self.loss_fn(net(xb), yb)) * len(xb)
        net.train()
        v = total / len(self.val_x)
        self.val_history.append([self.step_count, round(self.elapsed, 1), v, v / self.baseline if self.baseline else None])
        if v < self.best_loss:
            self.best_loss, self.best_step = v, self.step_count
            self.best_state = {k: t.clone() for k, t in contiguous_state(net).items()}
        return v

    def run(self) -> None:
        """Train to the budget (or to convergence with ``until_converged``), checkpointing on the way
        and on cancel; ends with the best validated weights loaded."""
        s = self.settings
        self.resume()
        self.prepare()
        self.start_average()
        train_rep = self.reporter.sub(0.05, 1.0, f"training {self.method}")
        self.net.train()
        started = time.perf_counter() - self.elapsed
        running, norms = [], []
        try:
            while self.progress() < 1.0 and not self.stopped_converged:
                value, norm = self.step()
                if self.averaged is not None:
                    self.update_average()
                self.elapsed = time.perf_counter() - started
                running.append(value)
                norms.append(norm)
                if self.step_count % self.LOG_EVERY == 0:
                    self._log(running, norms)
                    running, norms = [], []
                if self.step_count % s.validation_every == 0:
                    self.validate()
                    # never in the first half of the budget: a network can sit on a plateau for a long
                    # time before its loss drops (IQT-DL under the study's protocol stopped at step 980,
                    # 0.88x interpolation, on the plateau; the shipped DL dropped after step 600-900)
                    self.stopped_converged = s.until_converged and self.progress() >= CONVERGENCE_EARLIEST \
                        and converged(self.val_history)
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
        self.net = self.result_net
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
            "parameters": count_parameters(self.net),
            # the start model by file name: a model file does not carry the trainer's folders
            "settings": dict(dataclasses.asdict(self.settings), init_from=Path(self.settings.init_from).name
                             if self.settings.init_from else ""),
            "loss_history": self.history, "validation_history": self.val_history,
            "validation_interpolation_loss": self.baseline,
            "selected_step": self.best_step if self.best_state is not None else self.step_count,
            "validation_patches": 0 if self.val_x is None else int(len(self.val_x)),
            "validation_cubes": [[list(c) for c in cubes] for cubes in self.pool_builder.val_cubes],
            "validation_cube_size": self.pool_builder.cube_size(),
            "resumed_from": self.resumed_from,
            "converged": converged(self.val_history) if self.val_history else None,
            "stopped_at_convergence": self.stopped_converged,
            "started_from": None if self.start_model is None else {
                "model": self.start_model.name, "checksum": self.start_model.checksum,
                "atom_scale": round(self.start_scale, 3)},
        }


def train_network(method: str, pairs, settings: TrainSettings, reporter, device: str) -> tuple:
    """Train and return (network on the CPU, architecture params, record dict for the model file)."""
    trainer = Trainer(method, pairs, settings, reporter, device)
    trainer.run()
    return trainer.net, trainer.arch, trainer.record()
