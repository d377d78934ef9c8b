"""IQT-SRep solver benchmark (a script, not a test): prints ratios measured in one run.

1. Lasso solvers on the same LQ patch features of a real volume (Colin27, ×4 thick slices along k,
   SNR 20, seed 1), the same dictionary and the same λ (the shipped model's): time and summed
   objective ½‖D a − y‖² + λ‖a‖₁ for this library's FISTA (torch, CPU and CUDA when present),
   SPAMS ``lasso`` (LARS with a Gram matrix) and scikit-learn ``SparseCoder`` (lasso_lars, omp).
   scikit-learn is slow, so it runs on a subset (``--sklearn-patches``) and its time is scaled up
   to the full count (marked "scaled"); its objective is compared with SPAMS on that subset.
2. Whole-brain inference (api.enhance on the full Colin27 volume) per solver: seconds, peak resident
   memory of a fresh process, NRMSE/SSIM in the brain mask.

Targets (issue 3): objective within 0.5% of SPAMS; CPU at least as fast as SPAMS; GPU ≥ 30× faster
than SPAMS on the CPU; whole-brain CPU inference < 60 s.

    python Testing/benchmarks/bench_srep.py [--patches 20000] [--model PATH] [--skip-whole-brain]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IQTEnhance"))

from IQTEnhanceLib import api, data, features, metrics, sparse  # noqa: E402
from IQTEnhanceLib.methods.srep import SRepModel  # noqa: E402
from IQTEnhanceLib.models import default_model_path, load_model  # noqa: E402
from IQTEnhanceLib.normalize import intensity_scale, to_canonical  # noqa: E402
from IQTEnhanceLib.patches import sample_positions  # noqa: E402
from IQTEnhanceLib.simulate import simulate  # noqa: E402


def test_volume():
    hq, mask = data.load_dataset("colin27_t1", log=lambda *a: None)
    lq, _ = simulate(hq, factor=4, axis="k", snr=20.0, seed=1)
    return hq, mask, lq


def patch_features(lq, m: SRepModel, n: int, seed: int = 0) -> np.ndarray:
    lq_c = np.ascontiguousarray(to_canonical(lq.array.astype(np.float32), 0))
    lq_c = lq_c / np.float32(intensity_scale(lq_c))
    from IQTEnhanceLib.simulate import foreground_mask

    pos = sample_positions(lq_c.shape, m.lq_patch, n, np.random.default_rng(seed), foreground_mask(lq_c), 0.5)
    x = features.features_at(features.upsampled(lq_c, 4), pos, m.lq_patch, 4)
    return (x @ m.P).astype(np.float32)


CPU_SECONDS = {}


def timed(fn):
    """(result, wall seconds); the process CPU seconds of the call go to CPU_SECONDS[id(result)]
    (on shared cores the wall time includes waiting for other jobs; CPU time does not)."""
    c = time.process_time()
    t = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    CPU_SECONDS[id(out)] = time.process_time() - c
    return out, wall


def sklearn_codes(Z, D, lam, algorithm, nonzero=None):
    from sklearn.decomposition import SparseCoder

    kwargs = {"transform_alpha": lam} if algorithm != "omp" else {"transform_n_nonzero_coefs": nonzero}
    coder = SparseCoder(dictionary=D.T.astype(np.float64), transform_algorithm=algorithm, n_jobs=1, **kwargs)
    return coder.transform(Z.astype(np.float64)).astype(np.float32)


def solver_table(model_path, n, n_sklearn):
    model = load_model(model_path)
    m = SRepModel(model, model.factor)
    lam = m.lam
    _, _, lq = test_volume()
    Z = patch_features(lq, m, n)
    D = m.D_l
    print(f"\n## Lasso solvers: {n} LQ patch features of Colin27 (×4 along k, SNR 20), dictionary "
          f"{D.shape[0]}×{D.shape[1]} of {model_path.name}, λ = {lam:g}, torch threads {_threads()}")
    rows = []
    dic = sparse.Dictionary(D, "cpu")
    if sparse.spams_available():
        A_sp, t_sp = timed(lambda: sparse.lasso(Z, dic, lam, solver="spams"))
        f_sp = sparse.objective(Z, D, A_sp, lam).sum()
        rows.append(("SPAMS lasso (LARS, Gram)", t_sp, CPU_SECONDS[id(A_sp)], f_sp, float((A_sp != 0).sum(1).mean()), ""))
    else:
        A_sp, t_sp, f_sp = None, None, None
        print("(SPAMS not installed: pip install spams-bin)")
    for tol in (1e-3, 1e-4):
        A, t = timed(lambda: sparse.lasso(Z, dic, lam, solver="fista", tol=tol, max_iter=1000))
        rows.append((f"this library: FISTA torch CPU, tol {tol:g}", t, CPU_SECONDS[id(A)], sparse.objective(Z, D, A, lam).sum(),
                     float((A != 0).sum(1).mean()), ""))
    from IQTEnhanceLib.devices import cuda_available

    if cuda_available():
        gdic = sparse.Dictionary(D, "cuda")
        sparse.lasso(Z[:1000], gdic, lam, solver="fista")  # warm-up (CUDA context, kernels)
        import torch

        def gpu():
            out = sparse.lasso(Z, gdic, lam, solver="fista", tol=1e-4, max_iter=1000)
            torch.cuda.synchronize()
            return out

        A, t = timed(gpu)
        rows.append(("this library: FISTA torch CUDA, tol 1e-4", t, CPU_SECONDS[id(A)], sparse.objective(Z, D, A, lam).sum(),
                     float((A != 0).sum(1).mean()), ""))
    sub = Z[:n_sklearn]
    f_sp_sub = sparse.objective(sub, D, A_sp[:n_sklearn], lam).sum() if A_sp is not None else None
    nnz = max(1, int(round(float((A_sp[:n_sklearn] != 0).sum(1).mean())))) if A_sp is not None else 10
    for algorithm in ("lasso_lars", "omp"):
        A, t = timed(lambda: sklearn_codes(sub, D, lam, algorithm, nnz))
        f = sparse.objective(sub, D, A, lam).sum()
        rel = f"{100 * (f / f_sp_sub - 1):+.2f}% (subset)" if f_sp_sub else ""
        note = f" (omp with {nnz} atoms, SPAMS's mean support)" if algorithm == "omp" else ""
        rows.append((f"scikit-learn SparseCoder {algorithm}{note}", t * n / len(sub), CPU_SECONDS[id(A)] * n / len(sub), f * n / len(sub),
                     float((A != 0).sum(1).mean()), rel + " scaled"))
    print(f"| solver | wall s for {n} patches | CPU s | × SPAMS wall | objective | vs SPAMS | mean nnz |")
    print("|---|---|---|---|---|---|---|")
    for name, t, cpu, f, nz, note in rows:
        ratio = f"{t / t_sp:.2f}" if t_sp else "-"
        rel = note if note else (f"{100 * (f / f_sp - 1):+.3f}%" if f_sp else "-")
        print(f"| {name} | {t:.2f} | {cpu:.2f} | {ratio} | {f:.2f} | {rel} | {nz:.1f} |")


def _threads():
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return "-"


def whole_brain(model_path, solver):
    """Run in a fresh process (peak memory is that process's)."""
    hq, mask, lq = test_volume()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    c = time.process_time()
    result = api.enhance(lq, "srep", model=model_path, solver=solver)
    seconds = time.perf_counter() - t
    cpu = time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scores = metrics.evaluate(result.volume, hq, mask)
    tri = metrics.evaluate(api.enhance(lq, "trilinear").volume, hq, mask)
    print(json.dumps({"solver": solver, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak / 1024,
                      "rss_before_mb": base / 1024, "nrmse": scores["nrmse"], "ssim": scores["ssim"],
                      "trilinear_nrmse": tri["nrmse"], "trilinear_ssim": tri["ssim"],
                      "shape": list(result.volume.array.shape)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="srep model (default: the shipped one)")
    parser.add_argument("--patches", type=int, default=20000)
    parser.add_argument("--sklearn-patches", type=int, default=1000)
    parser.add_argument("--skip-solvers", action="store_true")
    parser.add_argument("--skip-whole-brain", action="store_true")
    parser.add_argument("--solvers", default="auto",
                        help="whole-brain solvers, comma-separated (fista on 2 CPU cores takes ~30× SPAMS)")
    parser.add_argument("--_whole-brain", dest="child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_path = args.model or default_model_path("srep")
    if args.child:
        whole_brain(model_path, args.child)
        return
    print(f"bench_srep: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if not args.skip_solvers:
        solver_table(model_path, args.patches, args.sklearn_patches)
    if not args.skip_whole_brain:
        print("\n## Whole-brain inference: Colin27 1 mm from ×4 thick slices (45×217×181 LQ → 180×217×181)")
        print("| solver | wall s | CPU s | peak RSS (MB) | NRMSE | SSIM | trilinear NRMSE / SSIM |")
        print("|---|---|---|---|---|---|---|")
        for solver in args.solvers.split(","):
            if solver == "spams" and not sparse.spams_available():
                continue
            proc = subprocess.run([sys.executable, __file__, "--model", str(model_path), "--_whole-brain", solver],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {solver} | failed: {proc.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| {solver} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['nrmse']:.4f} | {r['ssim']:.3f} | "
                  f"{r['trilinear_nrmse']:.4f} / {r['trilinear_ssim']:.3f} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")


if __name__ == "__main__":
    main()
