"""Benchmark of IQT-DL and IQT-DDL: whole-brain inference time and peak memory (CPU, and CUDA when a GPU
is there), and training throughput (patches per second).

    python Testing/benchmarks/bench_networks.py                 # both methods, CPU (+ CUDA if present)
    python Testing/benchmarks/bench_networks.py --methods ddl --threads 2 --train-steps 20

Inference: Colin27 T1 (181×217×181, 1 mm) simulated ×4 along k, SNR 20 → 45 thick slices, enhanced
onto the 1 mm grid with the shipped model (or, when none is shipped yet, an untrained network of
the default architecture: the time does not depend on the weights).  Every measurement runs in a
fresh process so that the peak resident memory (ru_maxrss) is that of one enhancement.
Targets: < 60 s and < 4 GB on 2 CPU cores; < 2 s on a GPU.
The machine's load average is printed: on a shared machine, wall times are upper bounds; the CPU
seconds of the enhancement (user + system) are less sensitive to other jobs (with 1 thread, the
wall time on an idle machine is about the CPU time).
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IQTEnhance"))


def _model(method: str):
    from IQTEnhanceLib.errors import ModelError
    from IQTEnhanceLib.models import default_model_path, load_model

    try:
        return load_model(default_model_path(method)), "shipped"
    except ModelError:
        from IQTEnhanceLib.nets.architectures import build_network
        from IQTEnhanceLib.nets.serialization import architecture_params, model_from_network

        net = build_network(method, 4, 16, 3)
        params = dict(architecture_params(method, 4, 16, 3), lq_aspect=4.0)
        return model_from_network(method, net, f"{method}_untrained", params, {}), "untrained (no shipped model)"


def child_inference(method: str, device: str, threads: int, overlap: float, tile_thick: int, tile_inplane: int) -> dict:
    import torch

    from IQTEnhanceLib import api, data, simulate

    torch.set_num_threads(threads)
    image, _mask = data.load_dataset("colin27_t1", log=lambda *a: None)
    lq, _ = simulate.simulate(image, factor=4, axis="k", snr=20, seed=1)
    model, origin = _model(method)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device == "cuda":   # warm-up: CUDA context, cuDNN autotuning
        api.enhance(lq, method, model=model, device=device, overlap=overlap, tile_thick=tile_thick,
                    tile_inplane=tile_inplane)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cpu_before = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    started = time.perf_counter()
    result = api.enhance(lq, method, model=model, device=device, overlap=overlap, tile_thick=tile_thick,
                         tile_inplane=tile_inplane)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    cpu_seconds = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu_before
    out = {"method": method, "device": device, "threads": threads, "model": origin, "seconds": seconds,
           "cpu_seconds": cpu_seconds,
           "lq_shape": list(lq.array.shape), "hq_shape": list(result.volume.array.shape),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           "rss_before_mb": rss_before}
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def child_training(method: str, device: str, threads: int, steps: int) -> dict:
    from IQTEnhanceLib import api, data

    image, mask = data.load_dataset("icbm2009c_t1", log=lambda *a: None)
    model = api.train(method, [image], masks=[mask], steps=steps, minutes=0, device=device, threads=threads,
                      validation_fraction=0.0, pool_size=2)
    t = model.training
    return {"method": method, "device": device, "threads": threads, "steps": t["steps"],
            "batch": t["settings"]["batch"], "patch": [t["settings"]["patch_thick"], t["settings"]["patch_inplane"],
                                                       t["settings"]["patch_inplane"]],
            "seconds": t["wall_seconds"], "patches_per_second": t["patches_per_second"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def run_child(args: list) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["dl", "ddl"], choices=["dl", "ddl"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, + cuda if present)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--tile-thick", type=int, default=0)
    parser.add_argument("--tile-inplane", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=20, help="0: skip the training throughput")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        result = child_inference(*rest) if kind == "infer" else child_training(*rest)
        print(json.dumps(result))
        return
    import torch

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at start")
    for device in devices:
        for method in args.methods:
            r = run_child(["infer", method, device, args.threads, args.overlap, args.tile_thick, args.tile_inplane])
            target = 60.0 if device == "cpu" else 2.0
            line = (f"inference {method:3s} {device:4s} ({r['threads']} threads, {r['model']} model): "
                    f"{r['seconds']:.1f} s for LQ {r['lq_shape']} -> HQ {r['hq_shape']} "
                    f"= {r['seconds'] / target:.2f} x the {target:.0f} s target ({r['cpu_seconds']:.1f} CPU s); peak RSS {r['peak_rss_mb']:.0f} MB "
                    f"(= {r['peak_rss_mb'] / 4096:.2f} x the 4 GB target; {r['rss_before_mb']:.0f} MB before)")
            if device == "cuda":
                line += f"; CUDA peak {r['cuda_peak_mb']:.0f} MB on {r['gpu']}"
            print(line, flush=True)
        if args.train_steps > 0:
            for method in args.methods:
                r = run_child(["train", method, device, args.threads, args.train_steps])
                print(f"training  {method:3s} {device:4s} ({r['threads']} threads): {r['patches_per_second']:.2f} "
                      f"patches/s ({r['steps']} steps of {r['batch']} patches {r['patch']} in {r['seconds']:.1f} s, "
                      f"simulation refreshes included); peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
