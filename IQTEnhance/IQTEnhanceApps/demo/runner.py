"""``iqt-enhance demo``: simulate a thick-slice scan of a real brain, enhance it with every installed
method, evaluate, and draw one figure.
"""
from __future__ import annotations

import importlib
import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np
from IQTEnhanceApps.common.files import (
    check_outputs,
    format_metrics_table,
    metrics_csv,
    read_mask,
)
from IQTEnhanceApps.common.options import HelpFormatter
from IQTEnhanceApps.common.runtime import (
    cancel_requested,
    check_cancel,
    info,
    progress_for,
)
from IQTEnhanceLib.errors import CancelledError, InputError, IQTError
from IQTEnhanceLib.volume import read_volume


# -- demo ---------------------------------------------------------------------------------------------
def demo_methods(device: str = "auto", wanted=None) -> tuple:
    """(methods to run, {method: reason skipped}) for the demo: every registered method whose module
    is installed and, if it needs one, has a shipped model."""
    from IQTEnhanceLib.devices import torch_available
    from IQTEnhanceLib.methods import METHOD_MODULES, get_method
    from IQTEnhanceLib.models import shipped_models

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


def _demo_figure(written, path, hq, mask, lq_nearest, outputs: dict, metrics: dict, thick_array_axis: int,
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
        written.figure(fig, path)
    finally:
        plt.close(fig)


def demo_input(args) -> tuple:
    """(HQ volume, mask or None, a name for the source) from --input/--mask or --data."""
    from IQTEnhanceLib.data import load_dataset, load_fixture

    if args.mask and not args.input:
        raise InputError("--mask goes with --input")
    if args.input:
        hq = read_volume(args.input)
        return hq, (read_mask(args.mask, hq) if args.mask else None), str(args.input)
    if args.data == "fixture":
        hq, mask = load_fixture("colin27_t1")
        return hq, mask, "Colin27 T1 crop (Testing/Data fixture)"
    hq, mask = load_dataset(args.data, log=lambda m: info(args, m))
    return hq, mask, args.data


def enhance_all(args, lq, hq, mask, methods, params, out_dir, progress, skipped) -> tuple:
    """Enhance ``lq`` with each method, write the volumes and score them: (metrics, arrays on the
    reference grid, enhance info) by method; a method that fails is noted in ``skipped``."""
    from IQTEnhanceLib.api import enhance
    from IQTEnhanceLib.metrics import evaluate, overlap

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
        args._outputs.volume(result.volume, out_dir / f"{name}.nii.gz")
        metrics = evaluate(result.volume, hq, mask)
        metrics["seconds"] = result.info["seconds"]
        results[name] = metrics
        infos[name] = result.info
        arrays[name] = overlap(result.volume, hq)[0].astype(np.float32)
    return results, arrays, infos


def demo_figure_from(args, lq, hq, mask, arrays, results, params, source, out_dir) -> bool:
    """slices.png: everything on the HQ grid the LQ was enhanced onto (the reference's first M*f
    slices).  False (with a note) when matplotlib is missing."""
    from IQTEnhanceLib.interpolation import upsample
    from IQTEnhanceLib.metrics import overlap
    from IQTEnhanceLib.volume import array_axis

    near = upsample(lq, params.factor, params.axis, "nearest")
    near_c, ref_c, ref_slices = overlap(near, hq)
    mask_c = (mask.array[ref_slices] > 0) if mask is not None else (ref_c != 0)
    check_cancel()
    if importlib.util.find_spec("matplotlib") is None:
        info(args, "note: no figure (slices.png): matplotlib is not installed; install it with: "
                   "pip install matplotlib")
        return False
    _demo_figure(args._outputs, out_dir / "slices.png", ref_c.astype(np.float32), mask_c, near_c, arrays, results,
                 array_axis(params.axis), f"{source}: x{params.factor} thick slices along {params.axis}, SNR {params.snr}")
    return True


def cmd_demo(args) -> int:
    from IQTEnhanceLib.simulate import SimulationParameters, simulate

    started = time.perf_counter()
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    hq, mask, source = demo_input(args)
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
        results, arrays, infos = enhance_all(args, lq, hq, mask, methods, params, out_dir, progress, skipped)
    finally:
        progress.close()
    rows = [{"name": name, "output": f"{name}.nii.gz", **m} for name, m in results.items()]
    info(args, format_metrics_table(rows))
    outputs.text(metrics_csv(rows, ("name", "output", "nrmse", "psnr", "ssim", "voxels", "seconds")),
                 out_dir / "metrics.csv")
    outputs.json({"data": source, "simulation": record, "metrics": results, "enhance": infos,
                  "skipped": skipped}, out_dir / "metrics.json")
    figure = "slices.png, " if demo_figure_from(args, lq, hq, mask, arrays, results, params, source, out_dir) else ""
    info(args, f"wrote {len(outputs.written)} files to {out_dir} ({figure}metrics.csv, metrics.json, "
               f"NIfTI volumes) in {time.perf_counter() - started:.0f} s")
    return 0
def register(subparsers, request) -> None:
    """Add ``iqt-enhance demo`` (``request``: :class:`IQTEnhanceApps.cli.parser.ParserRequest`)."""
    from IQTEnhanceLib.methods import METHOD_MODULES

    p = subparsers.add_parser(
        "demo", parents=[request.common], formatter_class=HelpFormatter,
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



