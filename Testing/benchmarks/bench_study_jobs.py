"""The study's wall time with worker processes against one process (a script, not a test), measured
in one run on the same cases and rows.

One process uses all cores as torch threads inside each method run; ``--jobs N`` runs N whole cases
at once with cores/N threads each.  The study's time goes to SRep's batched lasso solves, so the
default rows are the paper's SRep (its shipped model, or ``--model FILE``) on two whole-brain cases.

    python Testing/benchmarks/bench_study_jobs.py [--cases in_distribution ood_low_snr] [--jobs 2]
                                                  [--methods srep-paper] [--model FILE]

Prints one table: configuration, wall seconds, ratio to one process, and whether the records agree.
The machine's load average is printed: on a shared machine the ratio is what to read.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IQTEnhance"))

from IQTEnhanceApps.study.cases import default_cases, fixture_cases  # noqa: E402
from IQTEnhanceApps.common.runtime import available_cores  # noqa: E402
from IQTEnhanceApps.study.runner import StudyConfig, run_study  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["in_distribution", "ood_low_snr"])
    p.add_argument("--methods", nargs="+", default=["srep-paper"])
    p.add_argument("--model", type=Path, help="a model file for every row (default: the shipped ones)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--fixtures", action="store_true", help="the small committed crops (checks the script)")
    args = p.parse_args(argv)
    import torch
    cases = [c for c in (fixture_cases() if args.fixtures else default_cases(True)) if c.name in args.cases]
    models = {m: [args.model] for m in args.methods} if args.model else None
    print(f"{available_cores()} cores, load average {os.getloadavg()[0]:.2f}; rows {', '.join(args.methods)}; "
          f"cases {', '.join(c.name for c in cases)}", flush=True)
    timings, records = {}, {}
    for jobs in (1, args.jobs):
        with tempfile.TemporaryDirectory() as out:
            config = StudyConfig(out_dir=Path(out), cases=cases, methods=args.methods, models=models,
                                 figures=False, jobs=jobs, fixtures=args.fixtures)
            t0 = time.perf_counter()
            results = run_study(config, log=lambda message: None)
            timings[jobs] = time.perf_counter() - t0
            records[jobs] = {(r["case"], r["method"], r["replicate"]): r["nrmse"] for r in results["records"]}
            print(f"  jobs {jobs}: {timings[jobs]:.1f} s", flush=True)
    agree = records[1].keys() == records[args.jobs].keys() and all(
        abs(records[1][k] - records[args.jobs][k]) <= 1e-4 * abs(records[1][k]) for k in records[1])
    print("\n| configuration | wall s | ratio to one process | records agree |\n|---|---|---|---|")
    for jobs in (1, args.jobs):
        label = (f"one process, {torch.get_num_threads()} torch thread(s)" if jobs == 1 else
                 f"{jobs} workers, {max(1, available_cores() // jobs)} thread(s) each")
        print(f"| {label} | {timings[jobs]:.1f} | {timings[jobs] / timings[1]:.2f} | "
              f"{'yes' if agree else 'NO'} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
