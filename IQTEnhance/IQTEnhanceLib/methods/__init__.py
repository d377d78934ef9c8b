"""Method registry. Each method lives in its own module and exposes ``SPEC`` (a :class:`MethodSpec`).

Modules are imported on first use, so that interpolation works without torch installed.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

from ..errors import InputError


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass
class MethodOption:
    """One option of a method: its type, default and valid values, declared once.  Every front end
    (API, CLI, batch, study, Slicer panel) converts and checks values through :meth:`check`, and
    the panel takes its widget ranges from ``minimum`` / ``maximum``.

    ``min_exclusive`` / ``max_exclusive``: the bound itself is not allowed (λ > 0, overlap < 1).
    ``extra``: for a boolean option, the name of the extra map it switches on (SRep's ``trust_map``
    makes the ``trust`` map)."""

    name: str
    type: type
    default: object
    help: str
    choices: Optional[tuple] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    extra: Optional[str] = None

    def requirement(self) -> str:
        """What a valid value is, in words (the second half of the one error format)."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.type is bool:
            return "true or false"
        kind = {int: "an integer", float: "a number"}.get(self.type, f"a {getattr(self.type, '__name__', self.type)}")
        low = None if self.minimum is None else f"{'>' if self.min_exclusive else '>='} {self.minimum:g}"
        high = None if self.maximum is None else f"{'<' if self.max_exclusive else '<='} {self.maximum:g}"
        bounds = " and ".join(b for b in (low, high) if b)
        return f"{kind} {bounds}".strip()

    def _bad(self, method: str, value) -> InputError:
        return InputError(f"option {self.name} of {method} must be {self.requirement()} (got {value!r})")

    def check(self, value, method: str):
        """``value`` converted to the option's type (strings from a command line or a form too) and
        checked against the choices and bounds; one :class:`InputError` format for every fault."""
        t = self.type
        try:
            if t is bool:
                if isinstance(value, (bool, int)) and value in (0, 1, True, False):
                    converted = bool(value)
                elif str(value).strip().lower() in _TRUE | _FALSE:
                    converted = str(value).strip().lower() in _TRUE
                else:
                    raise ValueError
            elif t is int:
                if isinstance(value, bool):
                    raise ValueError
                number = float(value) if isinstance(value, str) else value
                converted = int(number)
                if converted != number:
                    raise ValueError
            elif t is float:
                if isinstance(value, bool):
                    raise ValueError
                converted = float(value)
                if converted != converted or converted in (float("inf"), float("-inf")):
                    raise ValueError
            else:
                converted = t(value)
        except (TypeError, ValueError, OverflowError):
            raise self._bad(method, value) from None
        if self.choices and converted not in self.choices:
            raise self._bad(method, value)
        if self.minimum is not None and (converted < self.minimum or (self.min_exclusive and converted == self.minimum)):
            raise self._bad(method, value)
        if self.maximum is not None and (converted > self.maximum or (self.max_exclusive and converted == self.maximum)):
            raise self._bad(method, value)
        return converted


def validate_option_values(declared, options, method: str, kind: str = "option") -> dict:
    """The one option validator: ``declared`` MethodOptions, given ``options`` → every option checked
    and converted (defaults for those not given).  Unknown names are an :class:`InputError`."""
    options = dict(options or {})
    known = {o.name: o for o in declared}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"method {method} has no option(s) {', '.join(unknown)} "
                         f"(its {kind}s: {', '.join(known) or 'none'})")
    return {name: (o.check(options[name], method) if name in options else o.default) for name, o in known.items()}


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

    def validate_options(self, options: Optional[dict] = None, *, train: bool = False) -> dict:
        """Every option of the method (training options with ``train``), given values checked and
        converted, the others at their defaults.  Unknown names, wrong types and out-of-range values
        are one :class:`InputError` each, in one format."""
        return validate_option_values(self.train_options if train else self.options, options, self.name,
                                      "training option" if train else "option")

    def extra_switches(self) -> dict:
        """{extra map name: the boolean option that switches it on}."""
        return {o.extra: o.name for o in self.options if o.extra}


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
