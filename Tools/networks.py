"""The shared recipe of the shipped networks (IQT-DL and IQT-DDL): training options, card text.

The shipped networks learn the default task: thick slices and noise (SNR 10-40, slice thickness
0.8-1.2 × factor, drawn per patch / volume) without the low-field tissue-contrast change.  Measured
(IQT-DL, ~200 steps each, validation at contrast 1 and SNR 20): 0.72× the interpolation's loss when
trained without contrast change, while training with contrast drawn in 0.85-1.15 per tissue class
was still at 0.76× after 800 steps: an unseen contrast per patch makes the target ambiguous and
slows learning four-fold on 2 CPU cores.  ``--contrast-range 0.85 1.15`` trains the contrast-aware
variant (on a GPU, with time to spare).
"""
from __future__ import annotations

import shipping
from IQTEnhanceLib.simulate import ParameterRanges


def parser(description: str, steps: int, converge: bool = True, weight_average: float = 0.0):
    """The recipes' command line; the defaults are the recipe's.  Both recipes count a fixed number of
    steps and have no wall-clock budget, so they do not depend on how busy the machine is (``--minutes``
    is an upper limit for other runs), and both hold out the cubes of split seed 0, so every seed trains
    on the same cubes and validates on the same patches."""
    p = shipping.parser(description)
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget (upper limit; 0: none)")
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps of the cosine schedule (0: the "
                   "schedule follows the wall-clock budget)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 per training on 2 shared cores)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--contrast-range", type=float, nargs=2, default=[1.0, 1.0],
                   help="tissue-contrast factors drawn per patch (default 1 1: none)")
    p.add_argument("--checkpoint-dir", default="")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the library's)")
    p.add_argument("--weight-average", type=float, default=weight_average,
                   help="decay of the moving average of the weights that is validated and shipped (0: none)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out validation cubes "
                   "(-1: --seed); fixed, seeds train on the same data and their validation losses compare")
    p.add_argument("--converge", dest="converge", action="store_true", default=converge,
                   help="stop once the validation loss improves < 1%% over the last 20%% of the steps")
    p.add_argument("--no-converge", dest="converge", action="store_false", help="run the whole schedule")
    return p


def learning_rate(args, method: str) -> float:
    """``--lr``, or the library's default learning rate of ``method``'s training."""
    from IQTEnhanceLib.methods import get_method

    return args.lr or get_method(method).validate_options({}, train=True)["lr"]


def train(args, method: str, name: str, **extra):
    import torch

    torch.set_num_threads(args.threads)
    # 21 held-out cubes of the head × 3 axes × 8 contrast/noise draws = 504 validation patches
    options = dict(minutes=args.minutes, steps=args.steps, threads=args.threads, lr=learning_rate(args, method),
                   weight_average=args.weight_average, split_seed=args.split_seed,
                   checkpoint_dir=args.checkpoint_dir,
                   resume=args.resume, device=args.device, validation_every=500, checkpoint_every=250,
                   validation_fraction=0.15, validation_draws=8, until_converged=args.converge, **extra)
    return shipping.train(method, name, args.seed, simulation=ParameterRanges(contrast=tuple(args.contrast_range)),
                          **options)


def _ending(training: dict) -> str:
    """How a training ended, for the card: at convergence, or at the end of its schedule and whether
    the validation loss had converged by then (the record's 1%/20% rule)."""
    if training.get("stopped_at_convergence"):
        return "at convergence"
    verdict = {True: " (converged: the validation loss improved < 1% over the last 20% of the steps)",
               False: " (not converged: the validation loss still improved ≥ 1% over the last 20% of the steps)"}
    return "at the end of its schedule" + verdict.get(training.get("converged"), "")


def training_lines(model) -> list:
    t, s = model.training, model.training.get("settings", {})
    sim = t.get("simulation", {})
    return [
        f"- Data: {t.get('data')}; LQ simulated on the fly along i, j and k ({sim.get('mode', '?')}: SNR "
        f"{sim.get('snr')}, slice thickness × {sim.get('thickness_scale')}, tissue contrast × {sim.get('contrast')}), "
        "fresh Rician noise for every patch, flips, transposition, intensity scaling ±"
        f"{s.get('intensity_jitter')}; patches anywhere in the {s.get('patch_region', 'brain')}.",
        f"- Patches {s.get('patch_thick')}×{s.get('patch_inplane')}×{s.get('patch_inplane')} LQ voxels, batch "
        f"{s.get('batch')}, {s.get('loss', 'mse').upper()} loss, Adam lr {s.get('lr'):g} with cosine decay"
        + (f", dictionary lr {s.get('dictionary_lr'):g}" if s.get("dictionary_lr") else "") + ".",
        f"- {t.get('steps')} steps ({t.get('patches_seen')} patches seen) in {t.get('wall_seconds')} s on "
        f"{t.get('device')} with {t.get('threads')} torch thread(s), torch {t.get('torch_version')}, seed "
        f"{t.get('seed')}; stopped {_ending(t)}; "
        "the machine's 2 cores were shared with other jobs, so the wall time is an upper bound.",
        f"- Validation: {t.get('validation_patches')} patches in held-out cubes of the head ("
        + (f"split seed {s.get('split_seed')}" if s.get("split_seed", -1) >= 0 else "chosen by the training seed")
        + "); the weights of the "
        f"lowest validation loss (step {t.get('selected_step')}) are shipped"
        + (f", as a moving average of the trained weights (decay {s.get('weight_average'):g})."
           if s.get("weight_average") else "."),
    ] + ([f"- Started from `{t['started_from']['model']}` (sha256 {t['started_from']['checksum'][:12]}…): its U-Net "
          "inside the UNet++, its head as the softmax over the atoms (scaled "
          f"×{t['started_from']['atom_scale']:.0f} to keep the softmax near its linear regime)."]
         if t.get("started_from") else [])


LIMITS = ["- Trained without the simulator's low-field tissue-contrast change (see Tools/networks.py for the "
          "measurement behind this choice): low-field contrast is out of distribution."]
