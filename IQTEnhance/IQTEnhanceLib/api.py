"""The engine's front door: :func:`enhance` one LQ volume with any method, :func:`train` a model.

Used by the CLI, the Slicer Logic and the batch runner alike.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .devices import resolve_device
from .errors import InputError, ModelError
from .grid import check_factor, default_axis, hq_geometry
from .methods import get_method
from .models import ModelFile, default_model_path, load_model
from .normalize import from_canonical, intensity_scale, to_canonical
from .progress import as_reporter
from .volume import Volume, array_axis, axis_letter, check_finite_volume, looks_like_label_map


@dataclasses.dataclass
class EnhanceResult:
    volume: Volume                       # the enhanced volume on the HQ grid
    extras: dict                         # extra HQ-grid maps, e.g. {"trust": Volume}
    info: dict                           # method, model, device, factor, axis, seconds, warnings
    model: Optional[ModelFile] = None    # the model used (learned from the scan with model="self")


def validate_input(lq: Volume, source: str = "input") -> None:
    """One clear error for input no method can enhance."""
    if not isinstance(lq, Volume):
        raise InputError(f"{source}: expected a Volume, got {type(lq).__name__}")
    if lq.array.ndim != 3:
        raise InputError(f"{source}: expected a 3-D volume, got shape {lq.array.shape}")
    if lq.array.size == 0 or min(lq.array.shape) < 1:
        raise InputError(f"{source}: the volume is empty")
    if lq.array.dtype.kind not in "biuf":
        raise InputError(f"{source}: voxel type {lq.array.dtype} is not a scalar intensity")
    check_finite_volume(lq, source)
    if looks_like_label_map(lq):
        raise InputError(f"{source}: looks like a label map (segmentation), not an intensity image")
    if not np.any(lq.array):
        raise InputError(f"{source}: every voxel is 0; nothing to enhance")


def resolve_model(method: str, model=None) -> Optional[ModelFile]:
    spec = get_method(method)
    if not spec.needs_model:
        if model is not None:
            raise InputError(f"method {method} takes no model file")
        return None
    if model is None:
        model = default_model_path(method)
    if not isinstance(model, ModelFile):
        model = load_model(model)
    model.check_fits(method=method)
    return model


def spacing_factor(lq: Volume, axis: str) -> Optional[int]:
    """The factor that makes the output voxels about isotropic: round(thick spacing / in-plane
    spacing) when that is 2..16, else None.  A simulated ×3 LQ then comes back at ×3 (a fixed
    default of 4 would put it on a grid the reference does not share)."""
    a = "ijk".index(axis)
    inplane = float(np.mean([lq.spacing[b] for b in range(3) if b != a]))
    ratio = int(round(float(lq.spacing[a]) / max(inplane, 1e-9)))
    return ratio if 2 <= ratio <= 16 else None


def resolve_factor_axis(lq: Volume, model: Optional[ModelFile], factor=None, axis=None) -> tuple:
    """Factor: the model's (a different ``factor`` is a :class:`ModelError`), else ``factor``, else
    :func:`spacing_factor`, else 4.  Axis: ``axis``, else the axis with the largest spacing."""
    axis = default_axis(lq) if axis in (None, "auto") else axis_letter(axis)
    if model is not None:
        if factor is not None and int(factor) != model.factor:
            raise ModelError(f"the model {model.name} up-samples ×{model.factor}; --factor {factor} does not fit it")
        factor = model.factor
    if factor is None:
        factor = spacing_factor(lq, axis) or 4
    factor = check_factor(factor)
    slices = lq.array.shape[array_axis(axis)]
    if slices < 2:
        raise InputError(f"the volume has {slices} slice along {axis}, smaller than the 2 needed to up-sample "
                         "between slices (is the thick-slice axis right?)")
    return factor, axis


def spacing_warnings(lq: Volume, model: Optional[ModelFile], factor: int, axis: str) -> list:
    """Thick-slice spacing that differs from the model's training spacing is normal clinical input:
    we run with the model's factor (the output spacing is then input spacing / factor) and warn
    when the voxel shape differs from the one the model learned by more than 25%."""
    out = []
    a = "ijk".index(axis)
    inplane = [lq.spacing[b] for b in range(3) if b != a]
    ratio = lq.spacing[a] / max(float(np.mean(inplane)), 1e-9)
    if ratio < 1.0 + 1e-6:
        out.append(f"the {axis} axis is not thicker than the others (spacing {lq.spacing.tolist()}); "
                   "is the thick-slice axis right?")
    if model is not None:
        trained = float(model.params.get("lq_aspect", model.factor))
        if abs(ratio / trained - 1.0) > 0.25:
            out.append(f"slice thickness / in-plane spacing is {ratio:.2f} here but {trained:.2f} in the "
                       f"model's training data; running with the model's factor ×{factor}")
    return out


def available_memory() -> Optional[int]:
    """Bytes this process may still allocate: the smallest of the system's available memory
    (``MemAvailable``), the cgroup limit minus its usage (containers, SLURM jobs) and
    ``$IQT_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix).  None where none can be read."""
    import os

    found = []
    limit = os.environ.get("IQT_MEMORY_LIMIT", "").strip()
    if limit:
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        try:
            found.append(int(float(limit[:-1]) * units[limit[-1].upper()]) if limit[-1].upper() in units
                         else int(float(limit)))
        except ValueError:
            raise InputError(f"IQT_MEMORY_LIMIT={limit!r} is not a size such as 8G or 8589934592") from None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            cap = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if cap != "max":
            found.append(max(int(cap) - used, 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def estimate_memory(lq_shape, method: str, factor: int) -> int:
    """Peak bytes of one :func:`enhance` call beyond the input volume: the method's measured cost per
    HQ output voxel plus its fixed cost (``MethodSpec.memory``)."""
    per_voxel, fixed = get_method(method).memory
    hq_voxels = int(np.prod([int(n) for n in lq_shape], dtype=np.int64)) * int(factor)
    return int(per_voxel * hq_voxels + fixed)


def check_memory(lq: Volume, method: str, factor: int) -> int:
    """Refuse up front, with the estimate, a run that would not fit in the available memory (a
    ``MemoryError`` or the kernel's OOM killer half-way through helps no one).  Returns the estimate."""
    need = estimate_memory(lq.array.shape, method, factor)
    have = available_memory()
    if have is not None and need > have:
        raise InputError(
            f"enhancing this {'×'.join(map(str, lq.size_ijk))} volume ×{factor} with {method} needs about "
            f"{need / 2**30:.1f} GiB of memory but {have / 2**30:.1f} GiB is available; crop or split the "
            "volume, use a method with a smaller footprint (e.g. trilinear), or free memory")
    return need


@dataclasses.dataclass
class EnhancePlan:
    """Everything about one enhancement that is decided before any work, resolved once by
    :func:`plan`: a bad option, model, device, factor or memory need fails there, and front ends
    (CLI, batch, Slicer) can show or record the plan before they run it with :func:`execute`."""

    method: str
    label: str
    model: Optional[ModelFile]
    factor: int
    axis: str
    device: str                      # "cpu" / "cuda"; "auto" when not probed (see plan's probe_device)
    options: dict                    # every method option, checked and converted
    memory_bytes: int                # the estimate the memory check used
    warnings: list
    geometry: dict                   # the output's HQ grid (grid.hq_geometry)
    input_shape: tuple
    learn_from_scan: bool = False    # model="self": learn the model from this scan first (selfsup)


def plan(lq: Volume, method: str = "trilinear", *, model=None, factor=None, axis=None, device: str = "auto",
         options: Optional[dict] = None, probe_device: bool = True, source: str = "input",
         contrast: Optional[str] = None) -> EnhancePlan:
    """The one preflight of :func:`enhance`: input, method, model, factor and axis, device, options
    and memory, each checked once.  ``probe_device=False`` checks the device name without importing
    torch (the Slicer panel: the worker process probes the GPU); ``source`` names the input in errors.
    ``model``: a file or :class:`ModelFile`, ``"self"``, or None / ``"auto"``: the shipped model of the
    scan's ``contrast`` (t1, t2; default t1) whose factor matches its spacing."""
    spec = get_method(method)
    validate_input(lq, source)
    if isinstance(model, str) and model == "auto":
        model = None          # every method: a method without models then takes none
    learn_from_scan = isinstance(model, str) and model == "self"
    if learn_from_scan:
        from .selfsup import check_method

        check_method(method)
        model = None
    elif spec.needs_model and model is None:
        from .models import pick_shipped_model

        thick = default_axis(lq) if axis in (None, "auto") else axis_letter(axis)
        model = resolve_model(method, pick_shipped_model(method, factor or spacing_factor(lq, thick), contrast))
    else:
        model = resolve_model(method, model)
    factor, axis = resolve_factor_axis(lq, model, factor, axis)
    if not spec.needs_torch:
        device_name = "cpu"
    elif probe_device:
        device_name = resolve_device(device)
    else:
        from .devices import check_device_name

        device_name = check_device_name(device)
    opts = spec.validate_options(options)
    memory = check_memory(lq, method, factor)
    notes = spacing_warnings(lq, model, factor, axis)
    check = model.training.get("heldout_check") if model is not None else None
    if isinstance(check, dict) and check.get("beats_linear") is False:
        notes.append(f"{model.name} did not beat linear interpolation on held-out data when it was trained "
                     f"(NRMSE {check.get('nrmse')} vs {check.get('nrmse_trilinear')}); its output may be worse "
                     "than trilinear interpolation")
    if not spec.needs_torch and str(device or "auto").lower() not in ("auto", "cpu"):
        notes.append(f"{method} always runs on the CPU (it does not use PyTorch); device {device} was ignored")
    return EnhancePlan(method, spec.label, model, factor, axis, device_name, opts, memory, notes,
                       hq_geometry(lq, factor, axis), tuple(lq.array.shape), learn_from_scan)


def execute(lq: Volume, plan_: EnhancePlan, progress=None, cancel=None,
            intensity_scale: Optional[float] = None) -> EnhanceResult:
    """Run a :func:`plan` on the volume it was made for (its warnings are issued here).

    ``intensity_scale``: normalise by this value instead of the input's own (the 99th percentile of
    its foreground, :func:`.normalize.intensity_scale`), so that a crop of a larger scan is enhanced
    exactly as inside the whole scan (every intensity-dependent step sees the same numbers)."""
    started = time.perf_counter()
    if tuple(lq.array.shape) != plan_.input_shape:
        raise InputError(f"the plan was made for a {plan_.input_shape} volume, not {tuple(lq.array.shape)}")
    spec = get_method(plan_.method)
    device_name = resolve_device(plan_.device) if spec.needs_torch else "cpu"   # a no-op once probed
    reporter = as_reporter(progress, cancel, stage=plan_.method)
    for note in plan_.warnings:
        warnings.warn(note, stacklevel=3)
    ax = array_axis(plan_.axis)
    array = np.asarray(lq.array, dtype=np.float32)  # a copy for non-float32 input; never written to
    scale = _normalisation(array, intensity_scale)
    canonical = np.ascontiguousarray(to_canonical(array, ax)) / np.float32(scale)
    reporter(0.0, f"{spec.label}: starting", force=True)
    model = plan_.model
    from . import selfsup

    if plan_.learn_from_scan:
        model = selfsup.learn(canonical, plan_.method, plan_.factor, reporter.sub(0.0, 0.5, "learning from the scan"))
        hq_c, extras_c = selfsup.enhance_both_planes(spec, canonical, plan_.factor, model, device_name,
                                                     reporter.sub(0.5, 1.0, spec.label), plan_.options)
    elif selfsup.is_line_model(model):     # a saved scan-specific model: both planes again
        hq_c, extras_c = selfsup.enhance_both_planes(spec, canonical, plan_.factor, model, device_name,
                                                     reporter.sub(0.0, 1.0, spec.label), plan_.options)
    else:
        hq_c, extras_c = spec.enhance(canonical, plan_.factor, model, device_name,
                                      reporter.sub(0.0, 1.0, spec.label), **plan_.options)
    geometry = plan_.geometry
    hq = from_canonical(np.asarray(hq_c, dtype=np.float32) * np.float32(scale), ax)
    if hq.shape != tuple(geometry["shape"]):
        raise RuntimeError(f"{plan_.method} returned shape {hq.shape}, expected {geometry['shape']}")
    make = lambda a: Volume(a, geometry["spacing"], geometry["origin"], geometry["direction"])  # noqa: E731
    extras = {k: make(from_canonical(np.asarray(v, dtype=np.float32), ax)) for k, v in extras_c.items()}
    reporter(1.0, "done", force=True)
    info = {
        "method": plan_.method, "label": spec.label, "factor": plan_.factor, "axis": plan_.axis,
        "device": device_name, "model": model.name if model else None,
        "model_sha256": model.checksum if model else None, "options": plan_.options, "intensity_scale": scale,
        "seconds": time.perf_counter() - started, "warnings": list(plan_.warnings),
        "memory_estimate_bytes": plan_.memory_bytes, "learned_from_scan": plan_.learn_from_scan,
    }
    return EnhanceResult(make(hq), extras, info, model)


def enhance(lq: Volume, method: str = "trilinear", *, model=None, factor=None, axis=None,
            device: str = "auto", progress=None, cancel=None, contrast: Optional[str] = None,
            intensity_scale: Optional[float] = None, **options) -> EnhanceResult:
    """Enhance ``lq`` onto its HQ grid (``factor`` × finer along the thick ``axis``): :func:`plan`
    then :func:`execute`.

    ``model``: a path or :class:`ModelFile` (default: the shipped model of the method), or ``"self"``
    (``linear``, ``srep``): learn the model from this scan's own fine axes first (:mod:`.selfsup`;
    the learned model is ``result.model``).
    ``axis``: ``i``/``j``/``k``, default the axis with the largest spacing.  ``factor`` defaults to
    the model's, else to the input's thick/in-plane spacing ratio (:func:`spacing_factor`), else 4.
    ``progress(fraction, message)`` and ``cancel()`` are called between batches; cancelling raises
    :class:`~.errors.CancelledError`.  ``intensity_scale``: see :func:`execute`.  The input volume is
    never modified.
    """
    return execute(lq, plan(lq, method, model=model, factor=factor, axis=axis, device=device, options=options,
                            contrast=contrast), progress, cancel, intensity_scale)


def _normalisation(array: np.ndarray, given: Optional[float]) -> float:
    """The intensity the methods' input is divided by: ``given``, else the input's own scale."""
    if given is None:
        return intensity_scale(array)
    try:
        value = float(given)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise InputError(f"the intensity scale must be a positive number (got {given!r})")
    return value


def train(method: str, hq_volumes: list, *, factor: int = 4, masks: Optional[list] = None,
          output: Optional[Path] = None, name: Optional[str] = None, seed: int = 0,
          simulation=None, progress=None, cancel=None, data_names: Optional[list] = None,
          axes=("i", "j", "k"), **options):
    """Train ``method`` on HQ volumes (LQ simulated on the fly along ``axes``, see :mod:`.training`).

    Returns the :class:`ModelFile` (saved to ``output`` when given).
    """
    from .models import save_model
    from .training import make_training_pairs

    spec = get_method(method)
    if spec.train is None:
        raise InputError(f"method {method} is not trained")
    opts = spec.validate_options(options, train=True)
    reporter = as_reporter(progress, cancel, stage=f"training {method}")
    factor = check_factor(factor)
    pairs = make_training_pairs(hq_volumes, masks, factor=factor, seed=seed, simulation=simulation, axes=axes,
                                reporter=reporter.sub(0.0, 0.1, "simulating training pairs"))
    provenance = {
        "data": ", ".join(data_names) if data_names else f"{len(hq_volumes)} volume(s)",
        "simulation": pairs.simulation_record, "seed": seed, "options": opts,
    }
    model = spec.train(pairs, factor, opts, reporter.sub(0.1, 1.0, f"training {method}"), provenance)
    if name:
        model.name = name
    if output is not None:
        save_model(output, model)
        model.path = Path(output)
    return model
