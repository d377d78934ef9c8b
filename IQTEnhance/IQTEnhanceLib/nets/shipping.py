"""The recipe of the shipped IQT-DL / IQT-DDL models: train on the ICBM152 2009c T1 template, evaluate
on the held-out Colin27 brain, write the model file and its model card, register it.

    python -m IQTEnhanceLib.nets.shipping --method dl --minutes 20 --threads 1
    python -m IQTEnhanceLib.nets.shipping --method ddl --evaluate-only   # re-score, rewrite the card

Evaluation (the same for every method in the study): Colin27 T1 at 1 mm, simulated ×4 thick slices
along k, Gaussian slice profile, Rician noise SNR 20, seed 1; NRMSE / PSNR / SSIM in its brain mask.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import api, data, metrics, simulate
from ..models import load_model, register_shipped_model, save_model, shipped_models_dir
from ..simulate import ParameterRanges

TRAINING_DATA = "ICBM152 2009c nonlinear symmetric T1 template (icbm2009c_t1), 1 mm isotropic"
EVALUATION = {"dataset": "colin27_t1", "factor": 4, "axis": "k", "snr": 20.0, "seed": 1}

# The shipped models learn the default task: thick slices and noise (SNR 10-40, slice thickness
# 0.8-1.2 × factor, drawn per patch / volume) without the low-field tissue-contrast change.  Measured
# (IQT-DL, ~200 steps each, validation at contrast 1 and SNR 20): 0.72× the interpolation's loss when
# trained without contrast change, while training with contrast drawn in 0.85-1.15 per tissue class
# was still at 0.76× after 800 steps: an unseen contrast per patch makes the target ambiguous and
# slows learning four-fold on 2 CPU cores.  `--contrast-range 0.85 1.15` trains the contrast-aware
# variant (on a GPU, with time to spare).
SHIPPED_SIMULATION = "ParameterRanges(contrast=(1.0, 1.0))"


def evaluate_on_colin27(model, log=print) -> dict:
    colin, mask = data.load_dataset("colin27_t1", log=log)
    lq, _record = simulate.simulate(colin, factor=EVALUATION["factor"], axis=EVALUATION["axis"],
                                    snr=EVALUATION["snr"], seed=EVALUATION["seed"])
    scores = {}
    for method in ("trilinear", model.method):
        started = time.perf_counter()
        result = api.enhance(lq, method, model=model if method == model.method else None, axis="k", device="cpu")
        seconds = time.perf_counter() - started
        scores[method] = dict(metrics.evaluate(result.volume, colin, mask), seconds=round(seconds, 1))
        log(f"Colin27 {method}: NRMSE {scores[method]['nrmse']:.4f} SSIM {scores[method]['ssim']:.3f} "
            f"PSNR {scores[method]['psnr']:.2f} ({seconds:.1f} s)")
    return dict(EVALUATION, scores=scores)


def _curve(history: list, points: int = 12) -> list:
    if len(history) <= points:
        return history
    step = (len(history) - 1) / (points - 1)
    return [history[round(i * step)] for i in range(points)]


def model_card(model, path: Path) -> str:
    t = model.training
    p = model.params
    s = t.get("settings", {})
    ev = t.get("evaluation", {}).get("scores", {})
    lines = [
        f"# {model.name}: {'IQT-DDL (deep dictionary)' if model.method == 'ddl' else 'IQT-DL (U-Net)'}, ×{model.factor}",
        "",
        f"File `{path.name}` ({path.stat().st_size / 1e6:.2f} MB), {p.get('parameters', '?')} parameters, "
        f"architecture `{p.get('architecture')}`: {p.get('levels')} levels, {p.get('base_filters')} base filters"
        + (f", dictionary of {p.get('atoms')} atoms of {model.factor}×{p.get('atom_size')}×{p.get('atom_size')} HQ voxels"
           if model.method == "ddl" else "") + ".",
        "",
        "## Task",
        f"Thick slices ×{model.factor} (slice thickness = {p.get('lq_aspect')} × in-plane spacing) of a T1-weighted "
        "brain MRI → 1 mm isotropic grid (the thick axis is up-sampled; in-plane is kept). The network predicts "
        "the residual over linear interpolation along the thick axis.",
        "",
        "## Training",
        f"- Data: {t.get('data')}; LQ simulated on the fly along i, j and k "
        f"({t.get('simulation', {}).get('mode', '?')}: SNR {t.get('simulation', {}).get('snr')}, slice thickness × "
        f"{t.get('simulation', {}).get('thickness_scale')}, tissue contrast × {t.get('simulation', {}).get('contrast')}), "
        "fresh Rician noise for every patch, flips, transposition, intensity scaling ±"
        f"{s.get('intensity_jitter')}.",
        f"- Patches {s.get('patch_thick')}×{s.get('patch_inplane')}×{s.get('patch_inplane')} LQ voxels, batch "
        f"{s.get('batch')}, {s.get('loss', 'mse').upper()} loss, Adam lr {s.get('lr')} with cosine decay.",
        f"- {t.get('steps')} steps ({t.get('patches_seen')} patches) in {t.get('wall_seconds')} s on {t.get('device')} "
        f"with {t.get('threads')} torch thread(s), torch {t.get('torch_version')}, seed {t.get('seed')}, "
        f"{t.get('date', '')}. The machine's 2 cores were shared with other jobs, so the wall time is an upper bound.",
        f"- Validation: {t.get('validation_patches')} patches in held-out brain cubes; loss of linear interpolation "
        f"there {t.get('validation_interpolation_loss', 0) or 0:.3e}.",
        "",
        "| step | seconds | training loss |",
        "|---|---|---|",
    ]
    lines += [f"| {h[0]} | {h[1]} | {h[2]:.3e} |" for h in _curve(t.get("loss_history", []))]
    if t.get("validation_history"):
        lines += ["", "| step | seconds | validation loss | ÷ interpolation's |", "|---|---|---|---|"]
        lines += [f"| {h[0]} | {h[1]} | {h[2]:.3e} | {h[3]:.3f} |" for h in _curve(t["validation_history"])]
    if ev:
        e = t["evaluation"]
        lines += [
            "", "## Held-out evaluation",
            f"Colin27 T1 (1 mm, full brain), simulated ×{e['factor']} along {e['axis']}, SNR {e['snr']}, seed "
            f"{e['seed']}; metrics in the brain mask; inference on the CPU (shared 2 cores).",
            "", "| method | NRMSE | PSNR | SSIM | seconds |", "|---|---|---|---|---|",
        ]
        for name, sc in ev.items():
            lines.append(f"| {name} | {sc['nrmse']:.4f} | {sc['psnr']:.2f} | {sc['ssim']:.3f} | {sc['seconds']} |")
    lines += [
        "", "## Limits",
        "- Trained on one template brain (T1w, adult): other contrasts, ages and pathology are out of distribution.",
    ] + ([
        "- Trained without the simulator's low-field tissue-contrast change (see SHIPPED_SIMULATION in "
        "IQTEnhanceLib/nets/shipping.py for the measurement behind this choice): low-field contrast is out of "
        "distribution.",
    ] if tuple(t.get("simulation", {}).get("contrast", ())) == (1.0, 1.0) else []) + [
        "- A thick-slice spacing far from the training aspect gives a warning; the factor is always ×"
        f"{model.factor}.",
        "- Research use only; not a medical device.",
    ]
    return "\n".join(lines) + "\n"


def write_card_and_register(model, path: Path, register: bool = True) -> None:
    card = path.with_suffix(".md")
    model.training["model_card"] = card.name
    save_model(path, model)
    card.write_text(model_card(model, path))
    if register:
        register_shipped_model(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("dl", "ddl"), required=True)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--atoms", type=int, default=64)
    parser.add_argument("--contrast-range", type=float, nargs=2, default=[1.0, 1.0],
                        help="tissue-contrast factors drawn per patch (default 1 1: none; see SHIPPED_SIMULATION)")
    parser.add_argument("--checkpoint-dir", default="")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", default="")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--until-converged", action="store_true",
                        help="stop once the validation loss improves < 1%% over the last 20%% of the steps")
    parser.add_argument("--generator", action="store_true", help="DDL: SRDD's dictionary generator")
    parser.add_argument("--compensation", action="store_true", help="DDL: SRDD's compensation branch")
    parser.add_argument("--atom-init", choices=("random", "kmeans"), default="random")
    parser.add_argument("--dictionary-lr", type=float, default=0.0)
    parser.add_argument("--no-register", action="store_true", help="write the model and card, do not list them")
    parser.add_argument("--evaluate-only", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    name = f"{args.method}_t1_x4"
    path = Path(args.out) if args.out else shipped_models_dir() / f"{name}.iqtm"
    if args.evaluate_only:
        model = load_model(path)
    else:
        image, mask = data.load_dataset("icbm2009c_t1")
        last = [0.0]

        def progress(fraction, message):
            now = time.monotonic()
            if now - last[0] > 30 or fraction >= 1.0:
                last[0] = now
                print(f"{time.strftime('%H:%M:%S')} {100 * fraction:5.1f}% {message}", flush=True)

        # 21 held-out cubes of the head × 3 axes × 8 contrast/noise draws = 504 validation patches
        options = dict(minutes=args.minutes, threads=args.threads, lr=args.lr, checkpoint_dir=args.checkpoint_dir,
                       resume=args.resume, device="cpu", validation_every=500, checkpoint_every=250,
                       validation_fraction=0.15, validation_draws=8, until_converged=args.until_converged)
        if args.method == "ddl":
            options.update(atoms=args.atoms, generator=args.generator, compensation=args.compensation,
                           atom_init=args.atom_init, dictionary_lr=args.dictionary_lr)
        simulation = ParameterRanges(contrast=tuple(args.contrast_range))
        model = api.train(args.method, [image], masks=[mask], factor=4, seed=args.seed, name=name,
                          data_names=[TRAINING_DATA], progress=progress, simulation=simulation, **options)
        for h in model.training["loss_history"]:
            print("loss", *h, flush=True)
        for h in model.training["validation_history"]:
            print("validation", *h, flush=True)
        save_model(path, model)
        model = load_model(path)
    model.training["evaluation"] = evaluate_on_colin27(model)
    write_card_and_register(model, path, register=not args.no_register)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.md').name}")


if __name__ == "__main__":
    main()
