"""Benchmark of the cohort batch: throughput of a plain sequential loop against
``iqt-enhance batch`` with 1 and 2 local Dask workers, and Dask's overhead per volume.

Run:  python Testing/benchmarks/bench_batch.py [--volumes 8] [--rounds 4] [--method linear] [--model FILE] [--fixtures]

Data: whole-brain LQ volumes simulated (×4 thick slices along k, SNR 20, a different seed per
volume) from the fetched templates (Colin27, ICBM 2009c T1/T2, ICBM 2009a T1); ``--fixtures`` uses
the small committed crops instead (seconds; Dask's fixed costs then dominate).  Without ``--model``
a small linear model is trained first (its size does not change the inference cost).

Configurations, all on this machine's cores (C):
  sequential    read → api.enhance → write in one process, the model loaded once, BLAS/torch on C threads
  batch 1×C     run_batch on a LocalCluster of 1 worker process with C threads
  batch C×1     run_batch on a LocalCluster of C single-threaded worker processes (the default)
The cohort is cut into ``--rounds`` parts and each part runs in every configuration in turn (order
rotated), so that a change of the machine's load hits all configurations alike.
Throughput = volumes / minute of the timed sections.  Cluster start-up is timed on its own (it is paid
once per command, not per volume).  Dask's overhead per volume = (batch 1×C wall − time inside the
tasks) / N: scheduling, transfers, result collection.  The whole batch against the plain loop,
(batch 1×C wall − sequential wall) / N, also counts what the batch does beyond the loop (input
checksums, provenance sidecars) and the noise.  Every number comes from this one run; on a machine
shared with other jobs they are noisy.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "IQTEnhance"))

from IQTEnhanceApps import batch  # noqa: E402
from IQTEnhanceLib import api  # noqa: E402
from IQTEnhanceLib.methods import get_method  # noqa: E402
from IQTEnhanceLib.models import load_model  # noqa: E402
from IQTEnhanceLib.simulate import SimulationParameters, simulate  # noqa: E402
from IQTEnhanceLib.volume import read_volume, write_volume  # noqa: E402

SOURCES = ("colin27_t1", "icbm2009c_t1", "icbm2009c_t2", "icbm2009a_t1")


def make_inputs(folder: Path, n: int, fixtures: bool) -> list:
    from IQTEnhanceLib.data import load_dataset, load_fixture

    folder.mkdir(parents=True, exist_ok=True)
    sources = SOURCES[:3] if fixtures else SOURCES   # no committed crop of ICBM 2009a
    loaded = {}
    paths = []
    for i in range(n):
        name = sources[i % len(sources)]
        if name not in loaded:
            loaded[name] = load_fixture(name) if fixtures else load_dataset(name, log=lambda m: None)
        hq, mask = loaded[name]
        lq, _ = simulate(hq, SimulationParameters(factor=4, axis="k", snr=20.0, seed=100 + i), mask=mask)
        paths.append(write_volume(lq, folder / f"{name}_s{100 + i}.nii.gz"))
    return paths


def train_model(path: Path) -> Path:
    from IQTEnhanceLib.data import load_fixture

    hq, mask = load_fixture("icbm2009c_t1")
    api.train("linear", [hq], factor=4, masks=[mask], output=path, seed=0, samples=20000, realizations=1,
              data_names=["icbm2009c_t1 crop"])
    return path


def sequential(inputs: list, outdir: Path, method: str, model_path) -> float:
    """The loop a user would write, with the model loaded once (the batch loads it once per worker)."""
    outdir.mkdir(parents=True, exist_ok=True)
    model = load_model(model_path) if model_path else None
    started = time.perf_counter()
    for path in inputs:
        result = api.enhance(read_volume(path), method, model=model, device="cpu")
        write_volume(result.volume, outdir / f"{batch.volume_stem(path)}_{method}.nii.gz")
    return time.perf_counter() - started


def start_cluster(workers: int, threads: int, method: str, model_path):
    """The command's own LocalCluster, warmed (imports, model) as run_batch warms it."""
    from distributed import Client

    started = time.perf_counter()
    cluster = batch.start_local_cluster(workers, threads, dashboard=":0")
    client = Client(cluster)
    client.run(batch.warm_worker, threads, method, model_path, load_model(model_path).checksum if model_path else None)
    return cluster, client, time.perf_counter() - started


def batch_run(client, folder: Path, outdir: Path, method: str, model_path, threads: int) -> tuple:
    """(wall seconds, seconds spent inside the tasks) of run_batch over ``folder``."""
    started = time.perf_counter()
    report = batch.run_batch(folder, outdir, method, model=model_path, device="cpu", client=client,
                             threads_per_worker=threads, progress=False, log=lambda m: None)
    wall = time.perf_counter() - started
    bad = [r for r in report.rows if r["status"] != "done"]
    if bad:
        raise SystemExit(f"batch run failed: {bad[0]['name']}: {bad[0]['error']}")
    return wall, sum(r["seconds"] for r in report.rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=8, help="cohort size (default 8)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="the cohort is cut into this many parts; each part runs in every configuration in "
                             "turn (rotating the order), so that a change of load hits all of them alike")
    parser.add_argument("--method", default="linear")
    parser.add_argument("--model", help="model file (default: a small linear model trained first)")
    parser.add_argument("--fixtures", action="store_true", help="small committed crops instead of whole brains")
    parser.add_argument("--keep", help="keep the inputs and outputs in this folder")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    cores = batch.available_cores()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_batch_"))
    clusters = []
    try:
        inputs = make_inputs(work / "lq", args.volumes, args.fixtures)
        rounds = max(1, min(args.rounds, len(inputs)))
        parts = [inputs[r::rounds] for r in range(rounds)]
        for r, part in enumerate(parts):
            (work / f"lq{r}").mkdir()
            for path in part:
                os.replace(path, work / f"lq{r}" / path.name)
        parts = [sorted((work / f"lq{r}").iterdir()) for r in range(rounds)]
        model = args.model
        if model is None and get_method(args.method).needs_model:
            model = str(train_model(work / "linear.iqtm"))
        shape = read_volume(parts[0][0]).array.shape
        n = len(inputs)
        print(f"{n} LQ volumes of {shape} voxels ([k, j, i], x4 along k), method {args.method}, {cores} cores, "
              f"{rounds} rounds; load average before: {os.getloadavg()[0]:.1f}")

        one = start_cluster(1, cores, args.method, model)
        many = start_cluster(cores, 1, args.method, model)
        clusters = [one, many]
        wall = {"seq": 0.0, "one": 0.0, "many": 0.0}
        inside = {"one": 0.0, "many": 0.0}
        for r in range(rounds):
            order = ["seq", "one", "many"]
            order = order[r % 3:] + order[: r % 3]
            for config in order:
                if config == "seq":
                    with threadpool_limits(limits=cores):
                        wall["seq"] += sequential(parts[r], work / "out_seq", args.method, model)
                else:
                    client = (one if config == "one" else many)[1]
                    threads = cores if config == "one" else 1
                    w, t = batch_run(client, work / f"lq{r}", work / f"out_{config}", args.method, model, threads)
                    wall[config] += w
                    inside[config] += t
            print(f"  round {r + 1}/{rounds}: cumulated wall seq {wall['seq']:.1f} s, batch 1x{cores} {wall['one']:.1f} s, "
                  f"batch {cores}x1 {wall['many']:.1f} s; load {os.getloadavg()[0]:.1f}", flush=True)

        seq = wall["seq"]
        rate = lambda seconds: 60.0 * n / seconds  # noqa: E731
        print(f"{'configuration':26s} {'wall s':>8s} {'vol/min':>8s} {'vs seq':>7s} {'start-up s':>10s}")
        print(f"{'sequential loop':26s} {seq:8.1f} {rate(seq):8.2f} {1.0:7.2f} {'-':>10s}")
        for label, key, c in ((f"batch 1 worker x {cores} thr", "one", one), (f"batch {cores} workers x 1 thr", "many", many)):
            print(f"{label:26s} {wall[key]:8.1f} {rate(wall[key]):8.2f} {seq / wall[key]:7.2f} {c[2]:10.1f}")
        per_volume_seq = seq / n
        outside = (wall["one"] - inside["one"]) / n
        total = (wall["one"] - seq) / n
        print(f"sequential time per volume: {per_volume_seq:.2f} s")
        print(f"Dask overhead per volume (batch 1 worker: wall - time inside the tasks): {outside * 1000:+.0f} ms = "
              f"{100 * outside / per_volume_seq:+.2f}% of the sequential time (target < 5%)")
        print(f"whole batch vs the plain loop, same threads (1 worker x {cores}): {total * 1000:+.0f} ms per volume = "
              f"{100 * total / per_volume_seq:+.1f}% (Dask + input checksum + sidecar + noise)")
        print(f"cluster start-up, paid once per command: {one[2]:.1f} s (1 worker), {many[2]:.1f} s ({cores} workers)")
        print(f"with start-up included, batch {cores}x1 does {rate(wall['many'] + many[2]):.2f} vol/min "
              f"({seq / (wall['many'] + many[2]):.2f}x sequential) for this cohort of {n}")
        print(f"load average after: {os.getloadavg()[0]:.1f} (other jobs on the machine make these numbers noisy)")
    finally:
        for cluster, client, _ in clusters:
            client.close()
            cluster.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
