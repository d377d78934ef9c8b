"""Method registry. Each method lives in its own module and exposes ``SPEC`` (a :class:`MethodSpec`).

Modules are imported on first use, so that interpolation works without torch installed.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

from ..errors import InputError


@dataclasses.dataclass
class MethodOption:
    name: str
    type: type
    default: object
    help: str
    choices: Optional[tuple] = None


@dataclasses.dataclass
class MethodSpec:
    """What the API, the CLI and the Slicer panel need to know about a method.

    ``enhance(lq, factor, model, device, reporter, **options) -> (hq, extras)`` works in the
    *canonical frame*: ``lq`` is a float32 array [thick, a, b] (thick axis first) already divided by
    the intensity scale (:mod:`..normalize`); it returns the HQ array [thick×factor, a, b] in the
    same units and a dict of extra HQ-grid maps (e.g. ``"trust"``).  ``model`` is a
    :class:`~..models.ModelFile` (None for methods without one).

    ``train(pairs, factor, options, reporter, provenance) -> ModelFile`` (None when the method
    is not trained) gets ``pairs`` from :func:`..training.make_training_pairs`.
    """

    name: str
    label: str
    description: str
    enhance: Callable
    needs_model: bool = False
    needs_torch: bool = False
    options: tuple = ()
    train: Optional[Callable] = None
    train_options: tuple = ()
    extras: tuple = ()  # names of the extra maps the method can make
    # Peak memory of one enhance call: (bytes per HQ output voxel, fixed bytes), from measured peak
    # RSS on Colin27 at two sizes with ~30% margin and the output's write copy; see api.estimate_memory.
    memory: tuple = (24, 0)


# name -> module (relative to this package); order = order shown to users
METHOD_MODULES = {
    "nearest": ".interpolation",
    "trilinear": ".interpolation",
    "bspline": ".interpolation",
    "srep": ".srep",
    "ddl": ".networks",
    "dl": ".networks",
    "linear": ".classic",
    "forest": ".classic",
}


def available_methods() -> list:
    """Names of the methods whose module exists in this installation."""
    names = []
    for name, module in METHOD_MODULES.items():
        try:
            get_method(name)
        except (ImportError, InputError):
            continue
        names.append(name)
    return names


def get_method(name: str) -> MethodSpec:
    if name not in METHOD_MODULES:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHOD_MODULES)}")
    try:
        module = importlib.import_module(METHOD_MODULES[name], __name__)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(__name__):
            raise InputError(f"method {name!r} is not available in this version") from None
        raise
    specs = getattr(module, "SPECS", None) or {module.SPEC.name: module.SPEC}
    if name not in specs:
        raise InputError(f"method {name!r} is not available in this version")
    return specs[name]
