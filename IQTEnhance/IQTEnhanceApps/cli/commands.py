"""The core commands: simulate, enhance, evaluate, train, fetch-data, models.

Each is a thin shell around one engine call with a progress callback and a cancel check; results
are written atomically with a JSON sidecar.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from IQTEnhanceApps.common.files import (
    check_outputs,
    format_metrics_table,
    metrics_csv,
    read_mask,
    sidecar_path,
    strip_volume_suffix,
)
from IQTEnhanceApps.common.options import collect_method_options
from IQTEnhanceApps.common.runtime import (
    PROG,
    cancel_requested,
    check_cancel,
    info,
    progress_for,
)
from IQTEnhanceLib.errors import InputError, require_module
from IQTEnhanceLib.volume import read_volume


def _lowfield_parameters(args, hq, mask) -> tuple:
    """(SimulationParameters, sidecar fields) for ``simulate --lowfield``."""
    from IQTEnhanceLib.lowfield import LowFieldContrast, LowFieldRanges, lowfield_parameters

    clash = [flag for flag, value in (("--contrast", args.contrast), ("--snr", args.snr)) if value is not None]
    if args.stochastic or clash:
        raise InputError("--lowfield sets the contrast and the SNR itself; leave out "
                         + ", ".join(clash + (["--stochastic"] if args.stochastic else [])))
    drawn = LowFieldRanges().draw(np.random.default_rng([args.seed, 2023]))
    contrast = LowFieldContrast(*(given if given is not None else default for given, default in zip(
        (args.gm_wm_loss, args.csf_gm_loss, args.snr_wm), (drawn.gm_wm, drawn.csf_gm, drawn.snr_wm))))
    params, record = lowfield_parameters(hq.array, None if mask is None else mask.array > 0, contrast, args.factor,
                                         args.axis, seed=args.seed, profile=args.profile, thickness=args.thickness)
    return params, {"mode": "lowfield", "lowfield": record,
                    "lowfield_ranges": dataclasses.asdict(LowFieldRanges())}


def cmd_simulate(args) -> int:
    from IQTEnhanceLib import __version__
    from IQTEnhanceLib.simulate import (
        ParameterRanges,
        SimulationParameters,
        sample_parameters,
        simulate,
    )

    out = Path(args.lq)
    check_outputs([("LQ", out, "volume"), ("LQ's sidecar", sidecar_path(out), "sidecar")],
                  [("HQ", args.hq, "volume"), ("--mask", args.mask, "volume")])
    hq = read_volume(args.hq)
    mask = read_mask(args.mask, hq) if args.mask else None
    lowfield_values = (args.gm_wm_loss, args.csf_gm_loss, args.snr_wm)
    if any(v is not None for v in lowfield_values) and not args.lowfield:
        raise InputError("--gm-wm-loss, --csf-gm-loss and --snr-wm go with --lowfield")
    if args.lowfield:
        params, mode = _lowfield_parameters(args, hq, mask)
    elif args.stochastic:
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
    from IQTEnhanceLib import __version__
    from IQTEnhanceLib.api import execute, plan
    from IQTEnhanceLib.methods import get_method

    spec = get_method(args.method)
    options = collect_method_options(args, spec.options, args.method)
    out = Path(args.out)
    learn = args.model == "self"
    if args.save_model and not learn:
        raise InputError("--save-model goes with --model self (it saves the model learned from the scan)")
    check_outputs([("OUT", out, "volume"), ("OUT's sidecar", sidecar_path(out), "sidecar"),
                   ("--trust-map", args.trust_map, "volume"), ("--save-model", args.save_model, "model")],
                  [("input", args.lq, "volume")] + ([] if learn else [("--model", args.model, "file")]))
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
                           device=args.device, options=options, contrast=args.contrast)
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
    if args.save_model:
        from IQTEnhanceLib.models import save_model

        check_cancel()
        save_model(args.save_model, result.model)
        outputs.add(args.save_model)
        record["saved_model"] = str(Path(args.save_model).resolve())
    outputs.json(record, sidecar_path(out))
    info(args, f"wrote {out} ({spec.label}, x{result.info['factor']} along {result.info['axis']}, "
               f"{result.info['seconds']:.1f} s on {result.info['device']}) and {sidecar_path(out)}")
    return 0


def cmd_evaluate(args) -> int:
    from IQTEnhanceLib.metrics import evaluate

    check_outputs([("--json", args.json, "table"), ("--csv", args.csv, "table")],
                  [("output", p, "volume") for p in args.outputs]
                  + [("HQ", args.reference, "volume"), ("--mask", args.mask, "volume")])
    reference = read_volume(args.reference)
    mask = read_mask(args.mask, reference) if args.mask else None
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
    info(args, format_metrics_table(rows))
    outputs = args._outputs
    common = {"reference": str(args.reference), "mask": str(args.mask) if args.mask else "reference != 0"}
    if args.json:
        data = {**rows[0], **common} if len(rows) == 1 else {**common, "results": rows}
        outputs.json(data, args.json)
    if args.csv:
        outputs.text(metrics_csv(rows), args.csv)
    return 0


def _load_training_data(args) -> tuple:
    from IQTEnhanceLib.data import DATASETS, load_dataset

    if args.hq:
        if args.data:
            raise InputError("give either --data NAME ... or --hq FILE ..., not both")
        if args.mask and len(args.mask) != len(args.hq):
            raise InputError(f"--mask needs one file per --hq file ({len(args.mask)} masks for {len(args.hq)} volumes)")
        volumes = [read_volume(p) for p in args.hq]
        masks = [read_mask(m, v) for m, v in zip(args.mask, volumes)] if args.mask else None
        return volumes, masks, [str(p) for p in args.hq]
    names = args.data or ["icbm2009c_t1"]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise InputError(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    pairs = [load_dataset(n, log=lambda m: info(args, m)) for n in names]
    return [p[0] for p in pairs], [p[1] for p in pairs], names


def cmd_train(args) -> int:
    from IQTEnhanceLib.api import train
    from IQTEnhanceLib.methods import get_method

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
    from IQTEnhanceLib.models import save_model

    check_cancel()
    save_model(out, model)
    args._outputs.add(out)
    info(args, f"wrote {out}: {model.describe()} in {time.perf_counter() - started:.0f} s")
    return 0


def cmd_fetch_data(args) -> int:
    from IQTEnhanceLib.data import DATASETS, cache_dir, fetch_all

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
    from IQTEnhanceLib.methods import METHOD_MODULES, get_method
    from IQTEnhanceLib.models import shipped_manifest, shipped_models_dir

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
    from IQTEnhanceLib.api import resolve_model
    from IQTEnhanceLib.methods.networks import dictionary_atoms
    from IQTEnhanceLib.models import shipped_models, shipped_models_dir

    png = Path(args.png) if args.png else None
    if png is not None:
        check_outputs([("--png", png, "table")], [("--show-dictionary", Path(args.show_dictionary), "file")]
                      if Path(args.show_dictionary).exists() else [])
    source = args.show_dictionary
    named = {e["name"]: shipped_models_dir() / e["file"] for e in shipped_models("ddl")}
    model = resolve_model("ddl", None if source == "default" else named.get(source, source))
    atoms = dictionary_atoms(model)                      # K × f × n × n
    k, f, n, _ = atoms.shape
    norms = np.sqrt((atoms.reshape(k, -1) ** 2).sum(axis=1))
    order = np.argsort(-norms)
    info(args, f"{model.describe()}: {k} atoms of {f}×{n}×{n} HQ voxels (residual over linear interpolation, "
               "in units of the input's intensity scale); sub-slice values of each atom's centre column:")
    for a in order:
        column = atoms[a, :, n // 2, n // 2]
        info(args, f"  atom {a:3d}  norm {norms[a]:.4f}  " + " ".join(f"{v:+.4f}" for v in column))
    if png is not None:
        require_module("matplotlib", "--png", "pip install matplotlib").use("Agg")
        import matplotlib.pyplot as plt

        image = atoms[order].transpose(0, 2, 1, 3).reshape(k * n, f * n) if n > 1 else atoms[order, :, 0, 0]
        limit = float(np.abs(image).max()) or 1.0
        fig, ax = plt.subplots(figsize=(2 + 0.4 * f * n, 2 + 0.08 * k * n))
        shown = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax.set_xlabel("HQ sub-slice along the thick axis" + (" × in-plane neighbour" if n > 1 else ""))
        ax.set_ylabel("atom (largest norm first)")
        ax.set_title(f"{model.name}: {k} learned HQ atoms")
        fig.colorbar(shown, ax=ax, label="residual / intensity scale")
        fig.tight_layout()
        try:
            args._outputs.figure(fig, png)
        finally:
            plt.close(fig)
        info(args, f"wrote {png}")
    return 0
