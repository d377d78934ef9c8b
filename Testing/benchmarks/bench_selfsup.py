"""Scan-specific IQT (``--model self``) against the shipped T1 models and trilinear interpolation.

    python Testing/benchmarks/bench_selfsup.py [--methods linear srep] [--cases colin27_t1 icbm2009c_t2]

Each case: a whole 1 mm brain, simulated ×4 thick slices along k (Gaussian profile, Rician SNR 20,
seed 1); NRMSE in its brain mask.  "self" learns from the LQ scan alone; "shipped" is the T1 model
trained on the ICBM 2009c T1 template.  Prints one table measured in this run: NRMSE, its ratio to
trilinear's and to the shipped model's, and the wall time (learning + enhancement) on this machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "IQTEnhance"))

from IQTEnhanceLib import api, data, metrics, simulate  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["linear", "srep"], choices=("linear", "srep"))
    p.add_argument("--cases", nargs="+", default=["colin27_t1", "icbm2009c_t2"])
    args = p.parse_args(argv)
    rows = []
    for case in args.cases:
        image, mask = data.load_dataset(case)
        lq, _ = simulate.simulate(image, factor=4, axis="k", snr=20, seed=1, mask=mask)

        def score(method, model=None):
            started = time.perf_counter()
            out = api.enhance(lq, method, model=model, axis="k", device="cpu")
            return metrics.evaluate(out.volume, image, mask)["nrmse"], time.perf_counter() - started

        tri, _ = score("trilinear")
        for method in args.methods:
            shipped, t_shipped = score(method)
            own, t_own = score(method, "self")
            rows.append((case, method, tri, shipped, own, t_shipped, t_own))
            print(f"{case} {method}: trilinear {tri:.4f} shipped {shipped:.4f} self {own:.4f} "
                  f"({t_own:.0f} s)", flush=True)
    print("\n| case | method | trilinear | shipped T1 model | self | self ÷ trilinear | self ÷ shipped | "
          "self seconds (learn + enhance) |")
    print("|---|---|---|---|---|---|---|---|")
    for case, method, tri, shipped, own, _ts, t_own in rows:
        print(f"| {case} | {method} | {tri:.4f} | {shipped:.4f} | {own:.4f} | {own / tri:.3f} | "
              f"{own / shipped:.3f} | {t_own:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
