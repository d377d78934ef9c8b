"""Writing files safely, in one place: atomic replacement and JSON for the engine's numbers.

Every file the engine writes (volumes, model files, sidecars, reports, checkpoints) first goes to a
hidden temporary name beside its destination, ``.NAME.partial-PID-THREAD[SUFFIX]``, and is renamed
over the destination only when complete, so a cancelled, failed or killed run never leaves half a file
under the real name. ``batch`` removes such leftovers by that pattern.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import numpy as np

PARTIAL_MARK = ".partial-"


def partial_name(path, suffix: str = "") -> Path:
    """The temporary name :func:`atomic_path` uses for ``path`` (unique per process and thread)."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}-{threading.get_ident()}{suffix}")


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    ``suffix`` keeps a file type for writers that choose their format by extension (e.g. ``.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def json_default(value):
    """``default=`` hook for :func:`json.dumps`: numpy → Python, Path → str, class → its name."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json_atomic(path, data, indent: int = 2) -> Path:
    """Atomic JSON write with :func:`json_default`. Infinite PSNR is written as ``Infinity``, which
    Python's json module reads back as ``inf``."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=json_default) + "\n")
