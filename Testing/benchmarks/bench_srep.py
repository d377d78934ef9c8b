"""IQT-SRep lasso benchmark (a script, not a test): one table, every number measured in this run.

Rows: the lasso solvers of IQTEnhanceLib.sparse (``homotopy``, the default; ``spams``; ``fista``),
scikit-learn's ``lasso_lars`` (on a subset, its time scaled to the full count), and the homotopy on
CUDA when a GPU is present.  Columns:

* seconds to code N real patch features (Colin27, ×4 thick slices along k, SNR 20, seed 1; the
  shipped model's dictionary, PCA basis and λ), and the summed objective ½‖Da − y‖² + λ‖a‖₁
  relative to SPAMS's on the same patches, and the mean support size;
* whole-brain SRep with default options (``api.enhance`` on the full Colin27 volume, in a fresh
  process per solver): wall seconds, peak resident memory, NRMSE in the brain mask.

    python Testing/benchmarks/bench_srep.py [--patches 20000] [--threads 2] [--skip-fista-whole-brain]
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

from IQTEnhanceApps.common.runtime import peak_rss_mb  # noqa: E402
from IQTEnhanceLib import api, data, features, metrics, sparse  # noqa: E402
from IQTEnhanceLib.methods.srep import SRepModel  # noqa: E402
from IQTEnhanceLib.models import default_model_path, load_model  # noqa: E402
from IQTEnhanceLib.normalize import intensity_scale, to_canonical  # noqa: E402
from IQTEnhanceLib.patches import sample_positions  # noqa: E402
from IQTEnhanceLib.simulate import foreground_mask, simulate  # noqa: E402


def test_volume():
    hq, mask = data.load_dataset("colin27_t1", log=lambda *a: None)
    lq, _ = simulate(hq, factor=4, axis="k", snr=20.0, seed=1)
    return hq, mask, lq


def patch_features(lq, m: SRepModel, n: int, seed: int = 0) -> np.ndarray:
    lq_c = np.ascontiguousarray(to_canonical(lq.array.astype(np.float32), 0))
    lq_c = lq_c / np.float32(intensity_scale(lq_c))
    pos = sample_positions(lq_c.shape, m.lq_patch, n, np.random.default_rng(seed), foreground_mask(lq_c), 0.5)
    x = features.features_at(features.upsampled(lq_c, 4), pos, m.lq_patch, 4)
    return (x @ m.P).astype(np.float32)


def timed(fn, synchronize=None):
    started = time.perf_counter()
    out = fn()
    if synchronize:
        synchronize()
    return out, time.perf_counter() - started


def sklearn_lars(Z, D, lam):
    from sklearn.decomposition import SparseCoder

    # SparseCoder divides transform_alpha by the signal length for LassoLars's 1/d scaling: pass λ
    coder = SparseCoder(dictionary=D.T.astype(np.float64), transform_algorithm="lasso_lars",
                        transform_alpha=lam, n_jobs=1)
    return coder.transform(Z.astype(np.float64)).astype(np.float32)


def whole_brain(model_path, solver, device):
    """Child process: one whole-brain enhance; prints a JSON line."""
    hq, mask, lq = test_volume()
    started = time.perf_counter()
    result = api.enhance(lq, "srep", model=model_path, solver=solver, device=device)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    scores = metrics.evaluate(result.volume, hq, mask)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "nrmse": scores["nrmse"]}))


def _peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM), getrusage's where /proc is missing."""
    return peak_rss_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_whole_brain(model_path, solver, device, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, __file__, "--model", str(model_path), "--threads", str(threads),
                           "--_whole-brain", f"{solver}:{device}"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="srep model (default: the shipped one)")
    parser.add_argument("--patches", type=int, default=20000)
    parser.add_argument("--sklearn-patches", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2, help="torch and SPAMS threads")
    parser.add_argument("--skip-whole-brain", action="store_true")
    parser.add_argument("--skip-fista-whole-brain", action="store_true",
                        help="FISTA takes several minutes per brain on 2 cores")
    parser.add_argument("--_whole-brain", dest="child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    model_path = args.model or default_model_path("srep")
    if args.child:
        solver, device = args.child.split(":")
        whole_brain(model_path, solver, device)
        return
    from IQTEnhanceLib.devices import cuda_available

    gpu = cuda_available()
    model = load_model(model_path)
    m = SRepModel(model, model.factor)
    lam, D = m.lam, m.D_l
    _, _, lq = test_volume()
    Z = patch_features(lq, m, args.patches)
    print(f"bench_srep: {os.cpu_count()} CPUs, {args.threads} threads, load {os.getloadavg()[0]:.1f} at start; "
          f"{len(Z)} patch features of Colin27 (×4 along k, SNR 20), dictionary {D.shape[0]}×{D.shape[1]} of "
          f"{model_path.name}, λ = {lam:g}")
    rows = []
    dic = sparse.Dictionary(D, "cpu")
    sparse.lasso(Z[:500], dic, lam, solver="homotopy")          # warm-up (threads, allocator)
    reference = None
    if sparse.spams_available():
        codes, seconds = timed(lambda: sparse.lasso_spams(Z, dic, lam, threads=args.threads))
        reference = sparse.objective(Z, D, codes, lam)
        rows.append(("SPAMS lasso (LARS, Gram)", "cpu", "spams", seconds, codes, Z))
    for name, solver, kwargs in (("homotopy (this library, default)", "homotopy", {}),
                                 ("FISTA (this library), tol 1e-4", "fista", {"tol": 1e-4, "max_iter": 1000})):
        codes, seconds = timed(lambda: sparse.lasso(Z, dic, lam, solver=solver, **kwargs))
        rows.append((name, "cpu", solver, seconds, codes, Z))
    if gpu:
        gdic = sparse.Dictionary(D, "cuda")
        sparse.lasso(Z[:1000], gdic, lam, solver="homotopy")
        codes, seconds = timed(lambda: sparse.lasso(Z, gdic, lam, solver="homotopy"), torch.cuda.synchronize)
        rows.append(("homotopy (this library, default)", "cuda", "homotopy", seconds, codes, Z))
    sub = Z[: args.sklearn_patches]
    codes, seconds = timed(lambda: sklearn_lars(sub, D, lam))
    rows.append((f"scikit-learn lasso_lars ({len(sub)} patches, time scaled)", "cpu", None,
                 seconds * len(Z) / len(sub), codes, sub))

    print("\n| solver | device | seconds for the patches | objective vs SPAMS | mean support | whole-brain s "
          "| peak RSS MB | whole-brain NRMSE |")
    print("|---|---|---|---|---|---|---|---|")
    for name, device, solver, seconds, codes, Y in rows:
        f = sparse.objective(Y, D, codes, lam).sum()
        rel = f"{100 * (f / reference[: len(Y)].sum() - 1):+.4f}%" if reference is not None else "-"
        support = float((codes != 0).sum(1).mean())
        brain = {}
        if solver and not args.skip_whole_brain and not (solver == "fista" and args.skip_fista_whole_brain):
            brain = run_whole_brain(model_path, solver, device, args.threads)
        if "error" in brain:
            tail = f"failed: {brain['error']} | | |"
        elif brain:
            tail = f"{brain['seconds']:.1f} | {brain['peak_rss_mb']:.0f} | {brain['nrmse']:.5f} |"
        else:
            tail = "not run | | |"
        print(f"| {name} | {device} | {seconds:.2f} | {rel} | {support:.1f} | {tail}", flush=True)
    print(f"\nload {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")


if __name__ == "__main__":
    main()
