"""``iqt-enhance batch``: its sub-parser and command.
"""
from __future__ import annotations

import dataclasses
import sys

from IQTEnhanceApps.batch.cluster import CLUSTER_KINDS, DEFAULT_DASHBOARD
from IQTEnhanceApps.batch.jobs import CANCELLED, DONE, FAILED, OUTPUT_SUFFIXES, SKIPPED
from IQTEnhanceApps.batch.runner import EXIT_SOME_FAILED, run_batch
from IQTEnhanceApps.common.options import (
    HelpFormatter,
    add_enhance_arguments,
    add_method_options,
    collect_method_options,
)
from IQTEnhanceApps.common.runtime import cancel_requested
from IQTEnhanceLib.errors import InputError


def register(subparsers, request=None) -> None:
    """Add ``iqt-enhance batch`` to the command line's sub-parsers."""
    p = subparsers.add_parser(
        "batch", formatter_class=HelpFormatter,
        help="enhance a cohort (folder, glob or CSV) on this machine or a Dask cluster",
        description="Enhance every volume of INPUTS into OUTDIR/<name>_<METHOD>.nii.gz, one Dask task per volume. "
                    "INPUTS is a folder (every volume file in it), a glob pattern (quote it; ** recurses) or a CSV "
                    "with an 'input' column and optional 'reference' and 'mask' columns (then NRMSE/PSNR/SSIM are "
                    "reported) and 'model' (a model per row); relative CSV paths are relative to the CSV's folder. "
                    "Each output gets a provenance sidecar <name>_<METHOD>.json (input checksum, method, model "
                    "checksum, parameters); a rerun skips the volumes whose output and sidecar match and redoes "
                    "the rest. OUTDIR/batch.csv and batch.json report every volume (done/skipped/failed/"
                    "cancelled, seconds, device, error, metrics).",
        epilog="Exit codes: 0 every volume done or skipped; 3 some volumes failed (listed in batch.csv, the others "
               "are done); 2 bad arguments; 130 interrupted (finished volumes are kept; a rerun resumes).\n"
               "Default cluster: a local one with one single-threaded worker process per core. On SLURM/PBS/SGE: "
               "--cluster slurm --cluster-config cluster.yaml (dask-jobqueue settings: cores, processes, memory, "
               "walltime, queue, account, ...; see the README).")
    p.add_argument("inputs", metavar="INPUTS", help="folder, glob pattern or CSV of the LQ volumes")
    p.add_argument("outdir", metavar="OUTDIR", help="output folder (created; files under it are never inputs)")
    add_enhance_arguments(p, method_help="", device_help="on each worker, auto = CUDA when the worker has it",
                          axis_help="each volume's axis with the largest spacing")
    g = p.add_argument_group("where it runs")
    g.add_argument("--workers", type=int, default=None,
                   help="worker processes (local cluster; with --cluster: workers to request). Default: the cores")
    g.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                   help="torch/BLAS threads per volume; each worker runs one volume at a time, so workers x T "
                        "should not exceed the cores (default: cores / workers)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="use a running Dask scheduler (tcp://host:8786)")
    g.add_argument("--cluster", choices=CLUSTER_KINDS, help="start workers as batch jobs through dask-jobqueue")
    g.add_argument("--cluster-config", metavar="FILE",
                   help="YAML with the dask-jobqueue settings of --cluster (see the README)")
    g.add_argument("--dashboard-address", default=DEFAULT_DASHBOARD, metavar="HOST:PORT",
                   help="where a cluster this command starts serves Dask's dashboard; it has no authentication "
                        "and shows file names, so it listens on this machine only unless you open it "
                        "(e.g. 0.0.0.0:8787)")
    g.add_argument("--retries", type=int, default=2,
                   help="how many worker deaths one volume survives before it is reported failed")
    o = p.add_argument_group("outputs")
    o.add_argument("--force", action="store_true", help="redo every volume, even those whose output matches")
    o.add_argument("--save-extras", action="store_true",
                   help="also write the method's extra maps (e.g. trust) as <name>_<METHOD>_<map>.nii.gz")
    o.add_argument("--suffix", choices=OUTPUT_SUFFIXES, default=".nii.gz", help="output file type")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-O", "--option", action="append", metavar="NAME=VALUE",
                   help="a method option (repeatable), e.g. -O stride=2; see `iqt-enhance enhance --method M --help`")
    _add_all_method_flags(p)
    p.set_defaults(func=cmd_batch)


def _add_all_method_flags(parser) -> None:
    """Generated ``--<option>`` flags for every installed method's options (the batch command sees
    no argv to pick one method's); a flag the chosen method lacks is an error in :func:`cmd_batch`."""
    from IQTEnhanceLib.methods import METHOD_MODULES, get_method

    merged = {}   # option name -> (first option, methods having it, types)
    for name in METHOD_MODULES:
        try:
            spec = get_method(name)
        except Exception:  # noqa: BLE001 - a method that cannot load is reported when chosen
            continue
        for option in spec.options:
            first, methods, types = merged.setdefault(option.name, (option, [], set()))
            methods.append(name)
            types.add(option.type)
    options = []
    for first, methods, types in merged.values():
        # the chosen method's own type and choices are applied by collect_method_options
        kind = first.type if len(types) == 1 else str
        options.append(dataclasses.replace(first, type=kind, choices=None, default="the method's",
                                           help=f"[{', '.join(methods)}] {first.help}"))
    if options:
        add_method_options(parser, "method options (see `iqt-enhance enhance --method M --help`)", options, "batch")


def cmd_batch(args) -> int:
    from IQTEnhanceLib.methods import get_method

    spec = get_method(args.method)
    known = {o.name for o in spec.options}
    stray = [k[len("opt__"):] for k, v in vars(args).items()
             if k.startswith("opt__") and v is not None and k[len("opt__"):] not in known]
    if stray:   # another method's flag: the validator's own "has no option" error
        spec.validate_options(dict.fromkeys(stray))
    options = collect_method_options(args, spec.options, args.method)
    if args.cluster and args.scheduler:
        raise InputError("give either --scheduler or --cluster, not both")
    if args.cluster_config and not args.cluster:
        raise InputError("--cluster-config needs --cluster slurm|pbs|sge")
    report = run_batch(
        args.inputs, args.outdir, args.method, model=args.model, factor=args.factor, axis=args.axis,
        device=args.device, options=options, scheduler=args.scheduler, cluster=args.cluster,
        cluster_config=args.cluster_config, workers=args.workers, threads_per_worker=args.threads_per_worker,
        retries=args.retries, force=args.force, save_extras=args.save_extras, suffix=args.suffix,
        progress=not args.quiet, cancel=cancel_requested, log=lambda m: print(m, flush=True),
        dashboard=args.dashboard_address)
    c = report.counts
    print(f"{len(report.rows)} volume(s) in {report.seconds:.1f} s: {c[DONE]} done, {c[SKIPPED]} skipped "
          f"(unchanged), {c[FAILED]} failed{f', {c[CANCELLED]} cancelled' if c[CANCELLED] else ''}; "
          f"report: {report.csv_path}", flush=True)
    for row in report.failed:
        print(f"  {row['status']}: {row['name']}: {row['error']}", file=sys.stderr)
    if c[CANCELLED]:
        return 130
    return EXIT_SOME_FAILED if c[FAILED] else 0
