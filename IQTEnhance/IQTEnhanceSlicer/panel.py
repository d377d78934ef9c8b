"""What the panel shows, derived from the engine's registries (no Qt here, so it is tested headless).

- the method list (``IQTEnhanceLib.methods``: a method appears as soon as its module lands; a method
  that needs a model is "ready" when a shipped model exists or the user loads one);
- the option fields of each method (its ``MethodSpec.options``) as typed parameter-pack fields with
  widget ranges, so only the chosen method's options are shown;
- the model list per method (``IQTEnhanceLib.models.shipped_models``);
- the device list (auto / CPU / GPU, GPU disabled with the reason as tooltip);
- the named processing states and what each one does to the buttons (as in SlicerMONAIAuto3DSeg).
"""
from __future__ import annotations

import dataclasses
import enum
import keyword
import math
from typing import Optional

import importlib.util

from IQTEnhanceLib.devices import cuda_available, cuda_unavailable_reason
from IQTEnhanceLib.errors import IQTError
from IQTEnhanceLib.methods import METHOD_MODULES, MethodOption, available_methods, get_method
from IQTEnhanceLib.models import shipped_models, shipped_models_dir

INTERPOLATION_METHODS = ("nearest", "trilinear", "bspline")
LOAD_MODEL_ITEM = "Load model file…"
LEARN_ITEM = "Learn from this scan"
AUTO_ITEM = "Automatic: the shipped model for the scan's slices and contrast"
AUTO_MODEL = "auto"
CONTRAST_ENTRIES = (("t1", "T1-weighted"), ("t2", "T2-weighted"))


# -- methods ----------------------------------------------------------------------------------
@dataclasses.dataclass
class MethodEntry:
    name: str
    label: str
    description: str
    needs_model: bool
    needs_torch: bool
    ready: bool                 # can run now without the user loading a model file
    reason: str = ""            # why not ready (shown as tooltip)
    extras: tuple = ()


def torch_installed() -> bool:
    """Without importing torch: the module is imported at Slicer start-up, where `import torch` would
    cost seconds (IQTEnhanceLib.devices.torch_available imports it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def method_entries() -> list:
    """Every method of this installation, in registry order (learned methods first in the panel)."""
    entries = []
    for name in available_methods():
        spec = get_method(name)
        models = shipped_models(name) if spec.needs_model else []
        ready, reason = True, ""
        if spec.needs_model and not models:
            ready, reason = False, f"no shipped {spec.label} model: load a model file"
        if spec.needs_torch and not torch_installed():
            ready, reason = False, "needs PyTorch (installed on first use, after you confirm)"
        entries.append(MethodEntry(name, spec.label, spec.description, spec.needs_model, spec.needs_torch,
                                   ready, reason, tuple(spec.extras)))
    learned = [e for e in entries if e.name not in INTERPOLATION_METHODS]
    return learned + [e for e in entries if e.name in INTERPOLATION_METHODS]


def default_method() -> str:
    """The first ready learned method (the paper's order: srep, ddl, dl, ...), else trilinear."""
    for entry in method_entries():
        if entry.ready and entry.name not in INTERPOLATION_METHODS:
            return entry.name
    return "trilinear"


def all_method_names() -> tuple:
    return tuple(METHOD_MODULES)


# -- options ----------------------------------------------------------------------------------
@dataclasses.dataclass
class OptionField:
    """One method option as a typed field of the method's parameter pack, with widget settings."""

    option: str                 # the engine's option name
    field: str                  # a valid Python identifier (``lambda`` -> ``lambda_``)
    type: type
    default: object
    help: str
    choices: Optional[tuple] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    decimals: Optional[int] = None
    step: Optional[float] = None

    @property
    def label(self) -> str:
        text = self.option.replace("_", " ")
        return text[:1].upper() + text[1:]


def field_name(option: str) -> str:
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in option)
    if not name or name[0].isdigit():
        name = "_" + name
    return name + "_" if keyword.iskeyword(name) else name


def _decimals_for(value: float) -> int:
    """Enough decimals to show ``value`` and a tenth of it (λ = 1e-4 needs 6 decimals); 4 for a
    default of 0 (often "use the model's value"), which fits weights down to 1e-4."""
    if value == 0:
        return 4
    return int(min(10, max(2, math.ceil(-math.log10(abs(value))) + 2)))


def option_field(option: MethodOption) -> OptionField:
    """Widget ranges from the option's declared bounds (the engine's own check): a spin box cannot
    hold a value the engine refuses.  An exclusive bound becomes the nearest allowed step; a side
    with no bound gets a generous range around the default (100x, at least 1000 for counts)."""
    t = option.type
    f = OptionField(option.name, field_name(option.name), t, option.default, option.help,
                    tuple(option.choices) if option.choices else None)
    if f.choices is not None or t in (bool, str):
        return f
    default = float(option.default or 0)
    if t is int:
        f.step = 1
        f.minimum = (int(option.minimum) + (1 if option.min_exclusive else 0)) if option.minimum is not None \
            else -1_000_000
        f.maximum = (int(option.maximum) - (1 if option.max_exclusive else 0)) if option.maximum is not None \
            else max(1000, int(abs(default) * 100))
    elif t is float:
        f.decimals = _decimals_for(default)
        f.step = 10 ** -(f.decimals - 1)
        tiny = 10.0 ** -f.decimals
        f.minimum = (option.minimum + (tiny if option.min_exclusive else 0.0)) if option.minimum is not None \
            else -max(1.0, abs(default) * 100)
        f.maximum = (option.maximum - (tiny if option.max_exclusive else 0.0)) if option.maximum is not None \
            else max(1.0, abs(default) * 100)
    return f


def extra_switches(method: str) -> set:
    """Boolean options that switch on one of the method's extra maps (declared by the option's
    ``extra``, e.g. SRep's ``trust_map``).  The panel's "Also make trust map" box drives them, so the
    option form omits them."""
    return set(get_method(method).extra_switches().values())


def option_fields(method: str) -> list:
    """The method's options as panel fields, without the extra-map switches."""
    switches = extra_switches(method)
    return [option_field(o) for o in get_method(method).options if o.name not in switches]


def options_from_fields(method: str, values: dict) -> dict:
    """Engine options from field values (``{"lambda_": 0.1}`` -> ``{"lambda": 0.1}``), typed."""
    given = {f.option: values[f.field] for f in option_fields(method) if f.field in values}
    checked = get_method(method).validate_options(given)
    return {name: checked[name] for name in given}


# -- models -----------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelEntry:
    label: str
    path: str                   # "" for the "Load model file…" item
    tooltip: str = ""
    default: bool = False


def model_entries(method: str, extra_paths=()) -> list:
    """"Automatic" (the default: the shipped model whose factor matches the scan's spacing, of the
    chosen contrast), the shipped models of ``method`` (its default first), "Learn from this scan" where
    the method can, the user's loaded files, then "Load model file…".  Empty for methods without a model."""
    try:
        spec = get_method(method)
    except IQTError:
        return []
    if not spec.needs_model:
        return []
    shipped = sorted(shipped_models(method), key=lambda e: (not e.get("default"), e["name"]))
    entries = [ModelEntry(AUTO_ITEM, AUTO_MODEL, "of the contrast chosen below, the shipped model whose factor "
                          "matches the scan's slice spacing ÷ in-plane spacing (the method's default model when "
                          "none matches)", True)] if shipped else []
    for m in shipped:
        tip = f"×{m['factor']}, {m.get('contrast', 't1').upper()}, trained on {m.get('training_data') or '?'}"
        if m.get("model_card"):
            tip += f"\n{m['model_card']}"
        entries.append(ModelEntry(f"{m['name']} (×{m['factor']})", str(shipped_models_dir() / m["file"]), tip))
    from IQTEnhanceLib.selfsup import SELF, SELF_METHODS

    if method in SELF_METHODS:
        entries.append(ModelEntry(LEARN_ITEM, SELF, "learn the model from this scan's own fine in-plane axes, then "
                                  "enhance it: for contrasts and slice thicknesses no shipped model knows "
                                  "(the factor follows the scan's spacing)"))
    for path in extra_paths:
        if path in (SELF, AUTO_MODEL):
            continue
        if path and all(e.path != str(path) for e in entries):
            entries.append(ModelEntry(str(path).replace("\\", "/").rsplit("/", 1)[-1], str(path), str(path)))
    entries.append(ModelEntry(LOAD_MODEL_ITEM, "", "choose an .iqtm model file trained with iqt-enhance train"))
    return entries


# -- devices ----------------------------------------------------------------------------------
@dataclasses.dataclass
class DeviceEntry:
    name: str                   # engine device name
    label: str
    enabled: bool
    tooltip: str


def device_entries(probe: Optional[bool] = None) -> list:
    """Auto / CPU / GPU.  Knowing whether the GPU works means importing torch (1.4 s with the CPU
    build, more with CUDA builds), which must not happen when the panel opens: ``probe=None`` probes
    only when torch is already imported; otherwise the GPU item stays available and the worker that
    runs on Apply reports a missing GPU.  ``probe=True`` forces the probe (e.g. after an install)."""
    import sys

    if probe is None:
        probe = "torch" in sys.modules
    if not probe:
        if not torch_installed():
            why = "PyTorch is not installed (it is installed on first use, after you confirm)"
            return [DeviceEntry("auto", "Auto", True, f"the GPU when PyTorch sees one, else the CPU (now: {why})"),
                    DeviceEntry("cpu", "CPU", True, "run on the CPU"),
                    DeviceEntry("cuda", "GPU", False, f"GPU unavailable: {why}")]
        return [DeviceEntry("auto", "Auto", True, "the GPU when PyTorch sees one, else the CPU (checked on Apply)"),
                DeviceEntry("cpu", "CPU", True, "run on the CPU"),
                DeviceEntry("cuda", "GPU", True, "run on the CUDA GPU (checked on Apply)")]
    gpu = cuda_available()
    reason = "" if gpu else cuda_unavailable_reason()
    return [
        DeviceEntry("auto", "Auto", True, "the GPU when PyTorch sees one, else the CPU"
                    + ("" if gpu else f" (now: CPU, because {reason})")),
        DeviceEntry("cpu", "CPU", True, "run on the CPU"),
        DeviceEntry("cuda", "GPU", gpu, "run on the CUDA GPU" if gpu else f"GPU unavailable: {reason}"),
    ]


# -- processing states ------------------------------------------------------------------------
class ProcessingState(str, enum.Enum):
    IDLE = "idle"
    STARTING = "starting"         # dependencies checked / input copied, worker not yet running
    INSTALLING = "installing"     # pip installs missing packages in a child process
    RUNNING = "running"
    CANCELLING = "cancelling"
    IMPORTING = "importing"       # worker done, output nodes being made on the main thread
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class StateView:
    """What a state does to the panel.  ``apply_enabled=None``: enabled when the inputs are valid."""

    text: str
    apply_text: str
    apply_enabled: Optional[bool]
    apply_tooltip: str
    inputs_enabled: bool
    progress_visible: bool
    busy: bool


STATE_TABLE = {
    ProcessingState.IDLE: StateView("Idle", "Apply", None, "Enhance the input volume", True, False, False),
    ProcessingState.STARTING: StateView("Starting", "Apply", False, "Preparing…", False, True, True),
    ProcessingState.INSTALLING: StateView("Installing Python packages", "Cancel", True,
                                          "Stop the installation (nothing is changed)", False, True, True),
    ProcessingState.RUNNING: StateView("Enhancing", "Cancel", True, "Stop now: the worker process is ended",
                                       False, True, True),
    ProcessingState.CANCELLING: StateView("Cancelling", "Cancelling…", False,
                                          "Ending the worker process", False, True, True),
    ProcessingState.IMPORTING: StateView("Creating output volumes", "Apply", False, "Adding the result to the scene",
                                         False, True, True),
    ProcessingState.COMPLETED: StateView("Completed", "Apply", None, "Enhance the input volume", True, True, False),
    ProcessingState.CANCELLED: StateView("Cancelled", "Apply", None, "Enhance the input volume", True, True, False),
    ProcessingState.FAILED: StateView("Failed", "Apply", None, "Enhance the input volume", True, True, False),
}


def progress_text(state: ProcessingState, update=None) -> str:
    """The progress bar's text: stage, percent and time left."""
    view = STATE_TABLE[ProcessingState(state)]
    if update is None or state not in (ProcessingState.RUNNING, ProcessingState.CANCELLING):
        return view.text
    text = f"{update.message or view.text}  {100 * update.fraction:.0f}%"
    left = update.remaining_text()
    if left and state is ProcessingState.RUNNING:
        text += f"  ({left} left)"
    return text


def input_problems(input_node, method: str, model_path: str, device: str) -> list:
    """Reasons Apply cannot run yet (its tooltip), cheap enough to evaluate on every GUI update."""
    problems = []
    if input_node is None:
        problems.append("Select an input volume.")
    try:
        spec = get_method(method)
    except IQTError as exc:
        return problems + [str(exc)]
    if spec.needs_model and not model_path and not shipped_models(method):
        problems.append(f"Load a {spec.label} model file (none is shipped).")
    import sys

    # probing the GPU imports torch (seconds): only when it is imported already; else the worker checks
    if device == "cuda" and "torch" in sys.modules and not cuda_available():
        problems.append(f"GPU unavailable: {cuda_unavailable_reason()}.")
    return problems


# -- remembered choices (QSettings across Slicer restarts) ---------------------------------------------
SETTINGS_KEY = "IQTEnhance/lastChoices"


def settings_text(method: str, device: str, options: dict) -> str:
    """What the panel stores after Apply: the method, the device and its options (JSON)."""
    import json

    return json.dumps({"method": method, "device": device, "options": {method: dict(options)}}, sort_keys=True)


def remembered_choices(text) -> dict:
    """Stored choices that are still valid in this installation: {"method", "device", "options"}
    (each key only when valid; options checked by the method's own declarations, invalid ones
    dropped).  Never raises: a settings file from another version must not break the panel."""
    import json

    try:
        stored = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    out = {}
    method = stored.get("method")
    if method in available_methods():
        out["method"] = method
        given = (stored.get("options") or {}).get(method) if isinstance(stored.get("options"), dict) else None
        if isinstance(given, dict):
            spec = get_method(method)
            kept = {}
            for name, value in given.items():
                try:
                    kept[name] = spec.validate_options({name: value})[name]
                except IQTError:
                    continue
            out["options"] = kept
    if stored.get("device") in ("auto", "cpu", "cuda"):
        out["device"] = stored["device"]
    return out
