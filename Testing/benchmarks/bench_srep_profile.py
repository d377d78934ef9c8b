"""IQT-SRep's cost against its size (a script, not a test): coding time, support and quality as the
dictionary's atoms and the patch size grow, measured in one run.

For every (patch, atoms) pair a small SRep model (ridge-residual, the shipped formulation) is trained
on the ICBM 2009c T1 template with reduced sampling (``--samples``, ``--iterations``: the point is the
cost curve, not the shipped quality); then, on the same Colin27 patches (×4 along k, SNR 20), the
table gives the lasso's seconds per 10,000 patches (the default solver, and SPAMS where installed),
the mean support, and the NRMSE of the whole enhancement on the Colin27 test crop.

    python Testing/benchmarks/bench_srep_profile.py [--atoms 128 256 512] [--patches 2x3x3 2x5x5 3x5x5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IQTEnhance"))

from IQTEnhanceLib import api, data, features, metrics, sparse  # noqa: E402
from IQTEnhanceLib.methods.srep import SRepModel  # noqa: E402
from IQTEnhanceLib.normalize import intensity_scale, to_canonical  # noqa: E402
from IQTEnhanceLib.patches import sample_positions  # noqa: E402
from IQTEnhanceLib.simulate import SimulationParameters, foreground_mask, simulate  # noqa: E402


def features_for(lq, m: SRepModel, n: int) -> np.ndarray:
    lq_c = np.ascontiguousarray(to_canonical(lq.array.astype(np.float32), 0))
    lq_c = lq_c / np.float32(intensity_scale(lq_c))
    pos = sample_positions(lq_c.shape, m.lq_patch, n, np.random.default_rng(0), foreground_mask(lq_c), 0.5)
    return (features.features_at(features.upsampled(lq_c, 4), pos, m.lq_patch, 4) @ m.P).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--atoms", nargs="+", type=int, default=[128, 256, 512])
    p.add_argument("--patches", nargs="+", default=["2x3x3", "2x5x5", "3x5x5"], help="LQ patch, thick axis first")
    p.add_argument("--samples", type=int, default=30000)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--coded", type=int, default=10000, help="Colin27 patches timed per model")
    args = p.parse_args(argv)
    image, mask = data.load_dataset("icbm2009c_t1")
    colin, colin_mask = data.load_dataset("colin27_t1")
    lq_colin, _ = simulate(colin, factor=4, axis="k", snr=20.0, seed=1, mask=colin_mask)
    crop, crop_mask = data.load_fixture("colin27_t1")
    lq_crop, _ = simulate(crop, factor=4, axis="k", snr=20.0, seed=1)
    rows = []
    for patch in args.patches:
        t, n, _m = (int(v) for v in patch.split("x"))
        for atoms in args.atoms:
            started = time.perf_counter()
            model = api.train("srep", [image], masks=[mask], factor=4, seed=0, axes=("k",),
                              simulation=SimulationParameters(snr=20.0), atoms=atoms, patch_thick=t,
                              patch_inplane=n, samples=args.samples, iterations=args.iterations)
            train_seconds = time.perf_counter() - started
            m = SRepModel(model, 4)
            Z = features_for(lq_colin, m, args.coded)
            dic = sparse.Dictionary(m.D_l, "cpu")
            sparse.lasso(Z[:200], dic, m.lam, solver="homotopy")
            t0 = time.perf_counter()
            codes = sparse.lasso(Z, dic, m.lam, solver="homotopy")
            homotopy = time.perf_counter() - t0
            spams = None
            if sparse.spams_available():
                t0 = time.perf_counter()
                sparse.lasso(Z, dic, m.lam, solver="spams")
                spams = time.perf_counter() - t0
            out = api.enhance(lq_crop, "srep", model=model, device="cpu")
            score = metrics.evaluate(out.volume, crop, crop_mask)["nrmse"]
            per10k = 10000 / len(Z)
            rows.append((patch, atoms, m.D_l.shape[0], homotopy * per10k, spams * per10k if spams else None,
                         float((codes != 0).sum(1).mean()), score, train_seconds))
            print(f"{patch} K={atoms}: {rows[-1]}", flush=True)
    print("\n| LQ patch | atoms | feature dims (PCA) | homotopy s / 10k patches | SPAMS s / 10k | mean support | "
          "NRMSE (Colin27 crop) | training s |")
    print("|---|---|---|---|---|---|---|---|")
    for patch, atoms, dims, h, s, support, score, train in rows:
        print(f"| {patch} | {atoms} | {dims} | {h:.2f} | {'-' if s is None else f'{s:.2f}'} | {support:.1f} | "
              f"{score:.4f} | {train:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
