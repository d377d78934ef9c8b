"""What every shipped-model recipe in this folder shares: the training data, the held-out evaluation,
the one model-card writer, and registration in ``IQTEnhance/Resources/Models/manifest.json``.

Evaluation (the same for every method, and the study's protocol): Colin27 T1 at 1 mm (never trained
on), simulated ×4 thick slices along k, Gaussian slice profile, Rician noise SNR 20, seed 1; NRMSE /
PSNR / SSIM inside its brain mask, on the slices whole LQ slabs cover.  Models of other factors are
evaluated the same way at their factor.  T2 models (the model zoo) train on the ICBM 2009c T2 template;
no other T2 brain installs offline, so they are scored on that template with a fresh noise seed (in
sample: the card says so) and, held out, on Colin27 T1 for the cost of the contrast change.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "IQTEnhance"))

from IQTEnhanceLib import api, data, metrics  # noqa: E402
from IQTEnhanceLib.grid import crop_to_whole_slabs  # noqa: E402
from IQTEnhanceLib.models import load_model, register_shipped_model, save_model, shipped_models_dir  # noqa: E402
from IQTEnhanceLib.simulate import simulate  # noqa: E402

TRAINING_DATASET = "icbm2009c_t1"
TRAINING_DATA = "ICBM152 2009c nonlinear symmetric T1 template (icbm2009c_t1), 1 mm isotropic"
TRAINING_SETS = {"t1": (TRAINING_DATASET, TRAINING_DATA),
                 "t2": ("icbm2009c_t2", "ICBM152 2009c nonlinear symmetric T2 template (icbm2009c_t2), 1 mm isotropic")}
EVALUATION = {"dataset": "colin27_t1", "factor": 4, "axis": "k", "snr": 20.0, "seed": 1}
DATASET_TEXT = {"colin27_t1": "Colin27 T1 (1 mm, full brain; never trained on)",
                "icbm2009c_t2": "ICBM 2009c T2 (1 mm; the training template itself, another noise draw: in sample)"}
CONTRAST_TEXT = {"t1": "T1-weighted", "t2": "T2-weighted"}
LIMITS = [
    "- Trained on one template brain (adult): other contrasts, ages and pathology are out of distribution.",
    "- A thick-slice spacing far from the training aspect gives a warning; `--model auto` picks the shipped model "
    "whose factor matches the scan's spacing.",
    "- Research use only; not a medical device.",
]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--out", default="", help="model file to write (default: the shipped one)")
    p.add_argument("--no-register", action="store_true", help="write the model and card, do not list them")
    p.add_argument("--evaluate-only", action="store_true", help="re-score the model file, rewrite its card")
    return p


def model_path(args, name: str) -> Path:
    return Path(args.out) if args.out else shipped_models_dir() / f"{name}.iqtm"


def progress_printer(every: float = 30.0):
    last = [0.0]

    def progress(fraction, message):
        now = time.monotonic()
        if now - last[0] > every or fraction >= 1.0:
            last[0] = now
            print(f"{time.strftime('%H:%M:%S')} {100 * fraction:5.1f}% {message}", flush=True)

    return progress


def train(method: str, name: str, seed: int, factor: int = 4, contrast: str = "t1", **kwargs):
    """``api.train`` on the contrast's training template with provenance and the total wall time."""
    dataset, text = TRAINING_SETS[contrast]
    image, mask = data.load_dataset(dataset)
    started = time.perf_counter()
    model = api.train(method, [image], masks=[mask], factor=factor, seed=seed, name=name, data_names=[text],
                      progress=progress_printer(), **kwargs)
    model.training["train_seconds_total"] = round(time.perf_counter() - started, 1)
    model.training["contrast"] = contrast
    return model


def colin27_case(factor: int = 4, dataset: str = "colin27_t1"):
    """(LQ, truth, mask) of the evaluation protocol at ``factor`` on ``dataset``."""
    image, mask = data.load_dataset(dataset)
    axis = EVALUATION["axis"]
    lq, _ = simulate(image, factor=factor, axis=axis, snr=EVALUATION["snr"], seed=EVALUATION["seed"], mask=mask)
    return lq, crop_to_whole_slabs(image, factor, axis), crop_to_whole_slabs(mask, factor, axis)


def measure(case, method: str, model=None, label: str = "Colin27", **options) -> dict:
    lq, truth, mask = case
    started = time.perf_counter()
    result = api.enhance(lq, method, model=model, axis=EVALUATION["axis"], device="cpu", **options)
    row = metrics.evaluate(result.volume, truth, mask)
    row.update(method=method, seconds=round(time.perf_counter() - started, 1))
    print(f"{label} {method}: NRMSE {row['nrmse']:.4f} SSIM {row['ssim']:.3f} PSNR {row['psnr']:.2f} "
          f"({row['seconds']} s)", flush=True)
    return row


def evaluate(model, case=None, dataset: str = "colin27_t1") -> dict:
    """Trilinear and the model on the evaluation case at the model's factor; stored in
    ``model.training["evaluation"]``."""
    case = case or colin27_case(model.factor, dataset)
    scores = {m: measure(case, m, model if m == model.method else None, label=dataset)
              for m in ("trilinear", model.method)}
    return dict(EVALUATION, factor=model.factor, dataset=dataset, scores=scores)


def _curve(history: list, points: int = 12) -> list:
    if len(history) <= points:
        return history
    step = (len(history) - 1) / (points - 1)
    return [history[round(i * step)] for i in range(points)]


def model_card(model, path: Path, title: str, model_lines: list, training_lines: list, limits=()) -> str:
    """The model card (Markdown): task, model, training (with the loss curves a network recorded),
    the held-out check made at the end of training, the held-out evaluation, limits."""
    t, p = model.training, model.params
    lines = [f"# {model.name}: {title}, ×{model.factor}", "",
             f"File `{path.name}` ({path.stat().st_size / 1e6:.2f} MB), method `{model.method}`.", "",
             "## Task",
             f"Thick slices ×{model.factor} (slice thickness = {p.get('lq_aspect', model.factor):g} × in-plane "
             f"spacing) of a {CONTRAST_TEXT[t.get('contrast', 't1')]} brain MRI → the in-plane spacing along the "
             "thick axis (1 mm isotropic for 1 mm in-plane data).", "", "## Model"] + list(model_lines) + ["", "## Training"] + list(training_lines)
    if t.get("loss_history"):
        lines += ["", "| step | seconds | training loss |", "|---|---|---|"]
        lines += [f"| {h[0]} | {h[1]} | {h[2]:.3e} |" for h in _curve(t["loss_history"])]
    if t.get("validation_history"):
        lines += ["", "| step | seconds | validation loss | ÷ interpolation's |", "|---|---|---|---|"]
        lines += [f"| {h[0]} | {h[1]} | {h[2]:.3e} | {h[3]:.3f} |" for h in _curve(t["validation_history"])]
    check = t.get("heldout_check")
    if check:
        lines += ["", f"Check at the end of training ({check['where']}, whole enhancement path, SNR {check['snr']}): "
                      f"NRMSE {check['nrmse']:.4f} vs trilinear {check['nrmse_trilinear']:.4f} "
                      f"({'beats' if check['beats_linear'] else '**does not beat**'} linear interpolation)."]
        if check.get("nrmse_rescaled"):
            rescaled = ", ".join(f"×{f}: {v:.4f}" for f, v in check["nrmse_rescaled"].items())
            lines[-1] += (f" The same LQ normalised with its intensity scale changed ({rescaled}): "
                          f"{'robust' if check['robust_to_normalisation'] else '**not robust**'} to the scan's "
                          f"normalisation (worst {check['normalisation_ratio']:.3f}× its own NRMSE).")
    evaluations = [t[key] for key in ("evaluation", "evaluation_other") if t.get(key)]
    for e in evaluations:
        lines += ["", "## Held-out evaluation" if e.get("dataset", "colin27_t1") == "colin27_t1" else "## Evaluation",
                  f"{DATASET_TEXT[e.get('dataset', 'colin27_t1')]}, simulated ×{e['factor']} along {e['axis']}, "
                  f"Gaussian slice profile, Rician noise SNR {e['snr']}, seed {e['seed']}; metrics in the brain "
                  "mask; inference on the CPU (2 cores shared with other jobs: the seconds are an upper bound).",
                  "", "| method | NRMSE | PSNR | SSIM | seconds |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {s['nrmse']:.4f} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['seconds']} |"
                  for n, s in e["scores"].items()]
    return "\n".join(lines + ["", "## Limits"] + list(limits) + LIMITS) + "\n"


def ship(model, path: Path, card_text, register: bool, default: bool = True) -> None:
    """Write the model file and its card (``card_text(model, path)``), and list it as shipped."""
    from IQTEnhanceLib import __version__

    model.training["model_card"] = path.with_suffix(".md").name
    model.training.setdefault("library_version", __version__)
    model.training.setdefault("date", time.strftime("%Y-%m-%d"))
    save_model(path, model)
    path.with_suffix(".md").write_text(card_text(model, path))
    if register:
        print("registered", register_shipped_model(path, default=default))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.md').name}")


def run(args, name: str, train_model, card_text, default: bool = True) -> int:
    """The recipe's main: train (or load with --evaluate-only), evaluate, write, register (as the
    method's default model unless ``default`` is False)."""
    path = model_path(args, name)
    model = load_model(path) if args.evaluate_only else train_model(args)
    model.training["evaluation"] = evaluate(model)
    ship(model, path, card_text, register=not args.no_register, default=default)
    return 0
