"""Benchmark of the patch engine: peak memory of a 256³ patchwise reconstruction (target < 2 GB) and
the speed of the vectorised PatchAccumulator against the plain per-patch loop it replaced.

Run:  python Testing/benchmarks/bench_patch_engine.py [--stride 1]
Prints numbers measured in this one run (memory by tracemalloc, which sees numpy's buffers, and the
process's peak RSS); timings are ratios on the same machine, not absolute targets.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "IQTEnhance"))

from IQTEnhanceLib.patches import PatchAccumulator, extract_patches, patch_positions, reconstruct_patchwise  # noqa: E402


def loop_accumulate(shape, positions, patches):
    """The per-patch loop the vectorised accumulator replaced (reference for speed and values)."""
    total = np.zeros(shape, np.float32)
    weight = np.zeros(shape, np.float32)
    p = patches.shape[1:]
    for n, (a, b, c) in enumerate(positions):
        region = (slice(a, a + p[0]), slice(b, b + p[1]), slice(c, c + p[2]))
        total[region] += patches[n]
        weight[region] += 1.0
    return total, weight


def peak_memory_256(stride, batch_size):
    """Reconstruct a 256³ HQ volume from a 64×256×256 LQ with 2×5×5 LQ patches (×4 along axis 0):
    the predictor repeats each LQ patch 4× along the thick axis (nearest up-sampling)."""
    factor, lq_patch = 4, (2, 5, 5)
    lq = np.random.default_rng(0).random((64, 256, 256), dtype=np.float32)
    calls = {"patches": 0}

    def predict(positions):
        calls["patches"] += len(positions)
        return np.repeat(extract_patches(lq, positions, lq_patch), factor, axis=1)

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    out = reconstruct_patchwise(lq.shape, factor, 0, lq_patch, stride, predict, batch_size=batch_size)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    expected = np.repeat(lq, factor, axis=0)
    error = float(np.abs(out - expected).max())
    return peak, seconds, calls["patches"], out.shape, error


def accumulate_speed(n_lq=(24, 96, 96)):
    lq_patch, factor = (2, 5, 5), 4
    positions = patch_positions(n_lq, lq_patch, 1)
    positions[:, 0] *= factor
    shape = (n_lq[0] * factor, n_lq[1], n_lq[2])
    patches = np.random.default_rng(1).random((len(positions), 8, 5, 5), dtype=np.float32)
    t = time.perf_counter()
    total, weight = loop_accumulate(shape, positions, patches)
    loop_s = time.perf_counter() - t
    acc = PatchAccumulator(shape)
    t = time.perf_counter()
    acc.add(positions, patches)
    vec_s = time.perf_counter() - t
    same = float(np.abs(acc.total - total).max()), float(np.abs(acc.weight - weight).max())
    return len(positions), loop_s, vec_s, same


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stride", type=int, nargs="+", default=[1, 2, 2], help="LQ patch stride")
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    stride = args.stride if len(args.stride) == 3 else args.stride * 3

    n, loop_s, vec_s, same = accumulate_speed()
    print(f"accumulate {n} patches of 8x5x5: per-patch loop {loop_s:.2f} s ({1e6 * loop_s / n:.1f} us/patch), "
          f"vectorised {vec_s:.2f} s ({1e6 * vec_s / n:.1f} us/patch): {loop_s / vec_s:.1f}x faster; "
          f"max difference total {same[0]:.2g}, weight {same[1]:.2g}")

    peak, seconds, patches, shape, error = peak_memory_256(stride, args.batch_size)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"reconstruct_patchwise to {shape} ({patches} patches, stride {stride}, batch {args.batch_size}): "
          f"{seconds:.1f} s, peak traced memory {peak / 2**30:.3f} GiB (target < 2 GB), "
          f"process peak RSS {rss / 1024:.2f} GiB, max error vs nearest up-sampling {error:.2g}")
    return 0 if peak < 2e9 else 1


if __name__ == "__main__":
    sys.exit(main())
