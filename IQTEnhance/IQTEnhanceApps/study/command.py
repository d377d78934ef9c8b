"""``iqt-enhance benchmark quality``: its sub-parser and command.
"""
from __future__ import annotations

from pathlib import Path

from IQTEnhanceApps.common.runtime import available_cores, cancel_requested, progress_for
from IQTEnhanceApps.study.cases import default_cases, fixture_cases
from IQTEnhanceApps.study.measures import PAPER_SREP
from IQTEnhanceApps.study.runner import (
    CHECKPOINT,
    FULL_LAMBDA_SWEEP,
    LAMBDA_SWEEP_SLAB,
    SWEEPABLE,
    StudyConfig,
    rerender,
    run_study,
)
from IQTEnhanceLib.errors import CancelledError, InputError


# ---------------------------------------------------------------------------------------------
# command line: iqt-enhance benchmark quality
# ---------------------------------------------------------------------------------------------
def register(subparsers, request=None) -> None:
    """Add ``benchmark quality`` to the CLI's sub-commands (called by :mod:`.cli`)."""
    existing = getattr(subparsers, "choices", {}).get("benchmark")
    if existing is not None:  # another module made `benchmark` already: add `quality` to it
        inner = next((a for a in existing._actions if a.__class__.__name__ == "_SubParsersAction"), None)
        if inner is None:
            inner = existing.add_subparsers(dest="benchmark_kind", metavar="KIND")
    else:
        parser = subparsers.add_parser("benchmark", help="benchmarks (quality: the in/out-of-distribution study)",
                                       description="Benchmarks of the methods.")
        inner = parser.add_subparsers(dest="benchmark_kind", metavar="KIND")
        parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    q = inner.add_parser(
        "quality", help="every method in and out of the training distribution, with a report",
        description="Evaluate every available method (shipped default models) on in-distribution and "
                    "out-of-distribution cases; write README.md, PNG figures and results.json to --out.")
    q.add_argument("--full", action="store_true",
                   help="the whole study: every case (a thicker-slice case too) and the λ sweep "
                        f"({' '.join(f'{lam:g}' for lam in FULL_LAMBDA_SWEEP)} unless --lambda-sweep says otherwise)")
    q.add_argument("--out", type=Path, default=Path("benchmark-results"), help="results folder (default: %(default)s)")
    q.add_argument("--methods", nargs="+", metavar="METHOD", help="methods to evaluate (default: all available)")
    q.add_argument("--cases", nargs="+", metavar="CASE",
                   help="cases to run (default: all): " + ", ".join(c.name for c in default_cases(True)))
    q.add_argument("--model", action="append", default=[], metavar="METHOD=PATH",
                   help="use this model file instead of the method's shipped default; repeat a METHOD with "
                        "other files for independently trained replicates (tables: mean ± sd over replicates "
                        "and seeds)")
    q.add_argument("--protocol-models", type=Path, metavar="DIR",
                   help="the models of a folder written by Tools/train_protocol.py (one training protocol for "
                        "every learned row, several seeds each); --model entries come on top")
    q.add_argument("--lambda-sweep", nargs="+", type=float, metavar="LAMBDA", default=[],
                   help="also code with an SRep row's model at these λ (rows ROW@λ and a λ table), e.g. "
                        "0.001 0.01 0.02 0.1 0.2")
    q.add_argument("--lambda-sweep-rows", nargs="+", metavar="ROW", default=[PAPER_SREP], choices=SWEEPABLE,
                   help="the rows whose first model the λ sweep codes (default: %(default)s, the paper's SRep)")
    q.add_argument("--lambda-sweep-slab", type=int, default=LAMBDA_SWEEP_SLAB, metavar="N",
                   help="the λ sweep scores a central slab of N LQ slices of each case (with the model's own λ "
                        "on the same slab), because small λ codes slowly; 0: the whole case (default: %(default)s)")
    q.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="noise/lesion seeds (default: 0; the noise-seed sd of a whole-brain NRMSE is about 0.06%% of "
                        "it, so training replicates, not noise seeds, carry the spread)")
    q.add_argument("--fixtures", action="store_true",
                   help="run on the small committed crops in Testing/Data (a smoke run in seconds)")
    q.add_argument("--device", default="cpu", help="auto, cpu or cuda (default: %(default)s)")
    q.add_argument("--jobs", type=int, metavar="N",
                   help="worker processes, each running whole cases with cores/N torch threads (default: one per "
                        "core; 1 with --fixtures, whose cases take seconds). On 2 cores two workers took 0.80x the "
                        "wall time of one process")
    q.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    q.add_argument("--resume", action="store_true",
                   help="go on from the results in --out (a run cut short, or one to extend with more rows, "
                        "replicates, cases or seeds): records of the same case, seed, row and model file are "
                        "kept, only the others run")
    q.add_argument("--report-only", action="store_true",
                   help="rewrite README.md (and redraw the figures) from the results already in --out; runs nothing")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    q.set_defaults(func=cli_quality)


def cli_quality(args) -> int:
    import sys

    if args.report_only:
        rerender(args.out)
        print(f"report: {Path(args.out) / 'README.md'} (re-rendered)")
        return 0
    models, protocol = {}, None
    if args.protocol_models:
        from IQTEnhanceApps.study.protocol import protocol_models

        models, protocol = protocol_models(args.protocol_models)
    for item in args.model or []:
        if "=" not in item:
            raise InputError(f"--model takes METHOD=PATH (got {item!r})")
        method, path = item.split("=", 1)
        models.setdefault(method.strip(), []).append(Path(path))
    cases = fixture_cases() if args.fixtures else default_cases(args.full)
    if args.cases:
        known = {c.name: c for c in (fixture_cases() if args.fixtures else default_cases(True))}
        bad = [c for c in args.cases if c not in known]
        if bad:
            raise InputError(f"unknown case(s) {', '.join(bad)}; choose from {', '.join(known)}")
        cases = [known[c] for c in args.cases]
    seeds = tuple(args.seeds) if args.seeds else (0,)
    if args.jobs is None:
        args.jobs = 1 if args.fixtures else available_cores()
    if args.jobs < 1:
        raise InputError(f"--jobs takes a positive number of worker processes (got {args.jobs})")
    if args.full and not args.lambda_sweep:
        args.lambda_sweep = list(FULL_LAMBDA_SWEEP)
    command = reproduce_command(args)
    config = StudyConfig(out_dir=args.out, cases=cases, methods=args.methods, models=models, seeds=seeds,
                         device=args.device, fixtures=args.fixtures, figures=not args.no_figures, command=command,
                         protocol=protocol, lambda_sweep=tuple(args.lambda_sweep),
                         lambda_sweep_rows=tuple(args.lambda_sweep_rows), lambda_sweep_slab=args.lambda_sweep_slab,
                         resume=args.resume, jobs=args.jobs)

    def log(message):
        if not args.quiet:
            print(message, flush=True)

    progress = progress_for(args, "benchmark")
    try:
        results = run_study(config, progress=progress, cancel=cancel_requested, log=log)
    except CancelledError:
        if (Path(args.out) / CHECKPOINT).exists():
            print(f"the cases measured so far are in {Path(args.out) / CHECKPOINT}; add --resume to the same "
                  "command to go on from there", file=sys.stderr)
        raise
    finally:
        progress.close()
    print(f"report: {Path(args.out) / 'README.md'} ({results['seconds'] / 60:.1f} min)", file=sys.stdout)
    if results["missing"]:
        print("not evaluated: " + ", ".join(f"{k} ({v})" for k, v in results["missing"].items()), file=sys.stderr)
    return 0


def reproduce_command(args) -> str:
    """The command that measures the same rows, cases and seeds from scratch (the report's
    "Reproduce" line): every choice that changes what is measured, none of where it goes
    (--out, --resume, --quiet)."""
    command = "iqt-enhance benchmark quality" + (" --full" if args.full else "") + (" --fixtures" if args.fixtures else "")
    if args.protocol_models:   # the folder is local: the report names the recipe that fills it
        command += " --protocol-models DIR"
    for item in args.model or []:
        command += f" --model {item.split('=', 1)[0]}=FILE"
    for flag, values in (("--methods", args.methods), ("--cases", args.cases), ("--seeds", args.seeds)):
        if values:
            command += f" {flag} " + " ".join(map(str, values))
    if args.lambda_sweep and not (args.full and tuple(args.lambda_sweep) == FULL_LAMBDA_SWEEP):
        command += " --lambda-sweep " + " ".join(f"{lam:g}" for lam in args.lambda_sweep)
    if args.lambda_sweep and list(args.lambda_sweep_rows) != [PAPER_SREP]:
        command += " --lambda-sweep-rows " + " ".join(args.lambda_sweep_rows)
    if args.lambda_sweep and args.lambda_sweep_slab != LAMBDA_SWEEP_SLAB:
        command += f" --lambda-sweep-slab {args.lambda_sweep_slab}"
    if args.device != "cpu":
        command += f" --device {args.device}"
    return command
