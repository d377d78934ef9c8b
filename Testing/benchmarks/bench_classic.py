"""Benchmark of the classic IQT baselines on the full held-out Colin27 brain.

    python Testing/benchmarks/bench_classic.py      # evaluate the shipped linear and forest models

(Their recipes: ``Tools/train_linear.py`` and ``Tools/train_forest.py``.)

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
from IQTEnhanceLib.models import (default_model_path, load_model)
from IQTEnhanceLib.simulate import simulate  # noqa: E402

SHIPPED = {"linear": "linear_t1_x4", "forest": "forest_t1_x4"}


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(f"cpu cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    case = colin27_case()
    models = {}
    for method in SHIPPED:
        models[method] = default_model_path(method)
    rows = [measure(case, "trilinear")] + [measure(case, method, models[method]) for method in SHIPPED]
    print(f"{'method':10s} {'NRMSE':>8s} {'PSNR':>7s} {'SSIM':>6s} {'infer s':>8s} {'train s':>8s} {'MB':>6s}")
    for r in rows:
        model = load_model(models[r["method"]]) if r["method"] in models else None
        train_s = model.training.get("train_seconds_total", model.training.get("train_seconds")) if model else 0
        size = models[r["method"]].stat().st_size / 1e6 if model else 0
        print(f"{r['method']:10s} {r['nrmse']:8.4f} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['seconds']:8.1f} "
              f"{train_s or 0:8.1f} {size:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
