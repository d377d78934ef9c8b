"""Exceptions raised by the engine. Each carries one sentence a user can act on."""


class IQTError(Exception):
    """Base class of the errors the engine raises on purpose."""


class InputError(IQTError, ValueError):
    """Bad input data or arguments: missing file, wrong dimension, label map, NaN voxels,
    grids that do not match, a factor that does not fit."""


class ModelError(IQTError, ValueError):
    """A model file that is corrupt, of another method, or does not fit the input."""


class CancelledError(IQTError):
    """Raised inside long calls when the caller's cancel check returns True."""


class MissingDependencyError(InputError):
    """An optional package that this feature needs is not installed; the message gives the command."""


def require_module(module: str, feature: str, install: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``feature`` and the exact
    ``install`` command (optional packages must never end in a traceback)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{feature} needs the Python package {module.split('.')[0]}, which is not "
                                     f"installed; install it with: {install}") from None
