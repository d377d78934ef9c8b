"""Method options on the command line: one flag per declared :class:`~IQTEnhanceLib.methods.MethodOption`
(type and help from the declaration), read back and validated by the method's own contract.
"""
from __future__ import annotations

import argparse

from IQTEnhanceLib.errors import InputError


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
    from IQTEnhanceLib.methods import validate_option_values

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


def method_epilog(kind: str, taken=()) -> str:
    """Help text listing every registered method, whether it is installed, and its options."""
    from IQTEnhanceLib.methods import METHOD_MODULES, get_method
    from IQTEnhanceLib.models import shipped_models

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


# -- parser -------------------------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks; shows a default only where there is one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "default" not in text
                and not any(action.default is v for v in (None, False, argparse.SUPPRESS))):
            text += " (default: %(default)s)"
        return text


def add_method_flags(parser, method, kind: str) -> None:
    if not method:
        return
    from IQTEnhanceLib.methods import get_method

    try:
        spec = get_method(method)
    except (InputError, ImportError):
        return  # the command reports it with one clear line
    options = spec.train_options if kind == "train" else spec.options
    if options:
        title = f"{'training ' if kind == 'train' else ''}options of {method}"
        add_method_options(parser, title, options, method)


def add_enhance_arguments(p, *, method_help: str, device_help: str, axis_help: str) -> None:
    """--method, --model, --device, --factor, --axis: what ``enhance`` and ``batch`` share."""
    from IQTEnhanceLib.methods import METHOD_MODULES

    p.add_argument("--method", required=True, choices=list(METHOD_MODULES), metavar="METHOD",
                   help=f"one of {', '.join(METHOD_MODULES)} {method_help}".rstrip())
    p.add_argument("--model", help="model file (.iqtm); 'auto' (default): the shipped model whose factor matches "
                                   "the scan's spacing; 'self' (linear, srep): learn the model from the scan's own "
                                   "fine in-plane axes first")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help=f"where learned methods run: {device_help}")
    p.add_argument("--factor", type=int, default=None,
                   help="up-sampling factor (default: the model's; without a model, the thick/in-plane "
                        "spacing ratio rounded, else 4)")
    p.add_argument("--axis", choices=("auto", "i", "j", "k"), default="auto",
                   help=f"thick-slice axis; auto = {axis_help}")
