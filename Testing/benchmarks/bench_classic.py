"""Benchmark of the classic IQT baselines on the full held-out Colin27 brain, and the recipe of their
shipped models.

    python Testing/benchmarks/bench_classic.py             # evaluate the shipped linear and forest models
    python Testing/benchmarks/bench_classic.py --retrain linear forest
        # retrain them on icbm2009c_t1, write the model files and cards, register them as shipped

Task: Colin27 T1 (1 mm), simulated ×4 thick slices along k, SNR 20, seed 1 (Gaussian slice profile,
Rician noise); metrics (NRMSE, PSNR, SSIM) inside the Colin27 brain mask.  Prints the numbers of this
one run; the seconds are wall time on whatever the machine was doing meanwhile (ratios, not targets).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "IQTEnhance"))

from IQTEnhanceLib import api, data, metrics  # noqa: E402
from IQTEnhanceLib.grid import crop_to_whole_slabs  # noqa: E402
from IQTEnhanceLib.models import (default_model_path, load_model, register_shipped_model, save_model,  # noqa: E402
                                  shipped_models_dir)
from IQTEnhanceLib.simulate import simulate  # noqa: E402

TRAINING_DATA = "ICBM152 2009c nonlinear symmetric T1 template (icbm2009c_t1), 1 mm isotropic"
SHIPPED = {"linear": "linear_t1_x4", "forest": "forest_t1_x4"}
LABELS = {"linear": "IQT linear regression (ridge)", "forest": "IQT regression forest (ridge + extra-trees)"}


def colin27_case(seed: int = 1, snr: float = 20.0):
    image, mask = data.load_dataset("colin27_t1")
    lq, _ = simulate(image, factor=4, axis="k", snr=snr, seed=seed, mask=mask)
    return lq, crop_to_whole_slabs(image, 4, "k"), crop_to_whole_slabs(mask, 4, "k")


def measure(case, method: str, model=None, **options) -> dict:
    lq, truth, mask = case
    started = time.perf_counter()
    result = api.enhance(lq, method, model=model, **options)
    seconds = time.perf_counter() - started
    row = metrics.evaluate(result.volume, truth, mask)
    row.update(method=method, seconds=seconds, model=result.info["model"])
    return row


def retrain(method: str, seed: int = 0):
    image, mask = data.load_dataset("icbm2009c_t1")
    started = time.perf_counter()
    model = api.train(method, [image], masks=[mask], factor=4, seed=seed, data_names=[TRAINING_DATA],
                      name=SHIPPED[method],
                      progress=lambda f, m: print(f"\r  {method}: {100 * f:5.1f}% {m:60.60s}", end="", flush=True))
    print()
    model.training["train_seconds_total"] = round(time.perf_counter() - started, 1)
    model.training["model_card"] = f"{SHIPPED[method]}.md"
    return model


def card(model, path: Path, rows: list) -> str:
    p, t = model.params, model.training
    size = path.stat().st_size / 1e6
    lines = [f"# {model.name}: {LABELS[model.method]}, ×{model.factor}", "",
             f"File `{path.name}` ({size:.2f} MB). Method `{model.method}` "
             f"(IQTEnhance/IQTEnhanceLib/methods/classic.py).", "", "## Task",
             f"Thick slices ×{model.factor} (slice thickness = {p['lq_aspect']:g} × in-plane spacing) of a "
             "T1-weighted brain MRI → the in-plane spacing along the thick axis (1 mm isotropic for 1 mm in-plane "
             "data).", "", "## Model",
             f"- Feature: {p['feature']}: LQ patch {'×'.join(map(str, p['lq_patch']))} voxels "
             f"(thick axis first) = {p['features']} values from the trilinear up-sampling.",
             f"- Target: {p['target']}: HQ patch {'×'.join(map(str, p['hq_patch']))} = {p['outputs']} values; "
             "overlapping predictions are averaged and added to the trilinear up-sampling.",
             f"- Ridge regression without intercept, penalty λ = {p['lambda']:g} × pairs, chosen on held-out "
             f"realizations among {', '.join(f'{v:g}' for v in p['lambdas_tried'])}."]
    if model.method == "forest":
        lines += [f"- Forest on the ridge's residual: {p['kind']}-trees, {p['trees']} trees, "
                  f"min {p['min_samples_leaf']} pairs per leaf, max_features {p['max_features']}, "
                  f"depth {p['depth']}, {p['leaves']} leaves; "
                  f"splits on {p['feature_components']} principal components of the features, leaves store "
                  f"{p['target_components']} principal components of the residual.",
                  f"- Trees stored as plain arrays (no pickle) and evaluated with numpy: scikit-learn is needed "
                  f"only to train ({t.get('trainer', '?')})."]
        val = (f"- Validation RMSE (held-out realizations, normalised units): trilinear "
               f"{p['validation_rmse_trilinear']:.4f}, ridge {p['validation_rmse_ridge']:.4f}, "
               f"ridge + forest {p['validation_rmse']:.4f}.")
    else:
        best = min(p["validation_rmse"])
        val = (f"- Validation RMSE (held-out realizations, normalised units): trilinear "
               f"{p['validation_rmse_trilinear']:.4f}, ridge {best:.4f}.")
    sim = t["simulation"]
    lines += [val, "", "## Training",
              f"- Data: {t['data']}; LQ simulated along {', '.join(sim['axes'])} (stochastic: SNR {sim['snr']}, "
              f"slice thickness × {sim['thickness_scale']}, tissue contrast × {sim['contrast']}), "
              f"{t['realizations_per_volume_axis']} realization(s) per axis, {t['pairs']} patch pairs in the "
              "brain mask.",
              f"- Seed {t['seed']}, {t.get('train_seconds_total', t['train_seconds'])} s on 2 shared CPU cores, "
              f"IQTEnhance {t.get('library_version', '?')}, {t.get('date', '')}.",
              f"- Recipe: `python Testing/benchmarks/bench_classic.py --retrain {model.method}` "
              f"(= `iqt-enhance train --method {model.method} --data icbm2009c_t1 --seed {t['seed']}` with the "
              "default options).", "",
              "## Held-out evaluation",
              "Colin27 T1 (1 mm, full brain), simulated ×4 along k, SNR 20, seed 1; metrics in the brain mask; "
              "each method with its default options (linear: every patch position, stride 1; forest: in-plane "
              "stride 2); inference on 2 CPU cores shared with other jobs (seconds are an upper bound).", "",
              "| method | NRMSE | PSNR | SSIM | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['nrmse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['seconds']:.1f} |")
    lines += ["", "## Limits",
              "- Trained on one template brain (T1w, adult): other contrasts, ages and pathology are out of "
              "distribution; a linear map cannot adapt to the noise level, it averages over SNR 10-40.",
              "- A thick-slice spacing far from the training aspect gives a warning; the factor is always ×4.",
              "- Research use only; not a medical device.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", nargs="+", default=[], choices=list(SHIPPED), metavar="METHOD",
                        help="retrain, write and register these shipped models (linear, forest)")
    parser.add_argument("--write-cards", action="store_true",
                        help="rewrite both model cards with this run's numbers (implied for retrained models)")
    args = parser.parse_args(argv)
    print(f"cpu cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    case = colin27_case()
    models = {}
    for method in SHIPPED:
        if method in args.retrain:
            models[method] = save_model(shipped_models_dir() / f"{SHIPPED[method]}.iqtm", retrain(method))
        else:
            models[method] = default_model_path(method)
    rows = [measure(case, "trilinear")] + [measure(case, method, models[method]) for method in SHIPPED]
    print(f"{'method':10s} {'NRMSE':>8s} {'PSNR':>7s} {'SSIM':>6s} {'infer s':>8s} {'train s':>8s} {'MB':>6s}")
    for r in rows:
        model = load_model(models[r["method"]]) if r["method"] in models else None
        train_s = model.training.get("train_seconds_total", model.training.get("train_seconds")) if model else 0
        size = models[r["method"]].stat().st_size / 1e6 if model else 0
        print(f"{r['method']:10s} {r['nrmse']:8.4f} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['seconds']:8.1f} "
              f"{train_s or 0:8.1f} {size:6.2f}")
    for method in SHIPPED:
        path = models[method]
        if method in args.retrain or args.write_cards:
            (path.parent / f"{SHIPPED[method]}.md").write_text(card(load_model(path), path, rows))
        if method in args.retrain:
            print("registered", register_shipped_model(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
