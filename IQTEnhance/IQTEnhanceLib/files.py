"""Writing files safely, in one place: atomic replacement and JSON for the engine's numbers.

Every file the engine writes (volumes, model files, sidecars, reports, checkpoints) first goes to a
hidden temporary name beside its destination, ``.NAME.partial-PID-THREAD[SUFFIX]`` (a folder
``.NAME.partial-PID-XXXX`` for multi-file volumes), and is renamed over the destination only when
complete, so a cancelled, failed or killed run never leaves half a file under the real name.  A process
killed outright (SIGKILL, power loss) leaves its temporary behind: :func:`remove_stale_partials` deletes
those of a destination whose writing process no longer runs (``enhance`` calls it for its outputs,
``batch`` for its folder).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

PARTIAL_MARK = ".partial-"


def partial_name(path, suffix: str = "") -> Path:
    """The temporary name :func:`atomic_path` uses for ``path`` (unique per process and thread)."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}-{threading.get_ident()}{suffix}")


def partial_folder(path) -> Path:
    """A new temporary folder beside ``path`` for writes that produce several files at once."""
    path = Path(path)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL_MARK}{os.getpid()}-", dir=path.parent))


_PARTIAL_PID = re.compile(re.escape(PARTIAL_MARK) + r"(\d+)-")


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def stale_partials(path) -> list:
    """Temporary files and folders of earlier writes of ``path`` whose process has ended."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return []
    stale = []
    for item in folder.glob(f".{glob.escape(path.name)}{PARTIAL_MARK}*"):
        match = _PARTIAL_PID.search(item.name[len(path.name) + 1:])
        if match is None or not _pid_running(int(match.group(1))):
            stale.append(item)
    return sorted(stale)


def remove_stale_partials(path) -> list:
    """Delete :func:`stale_partials` of ``path``; returns what was removed."""
    removed = []
    for item in stale_partials(path):
        with contextlib.suppress(OSError):
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
            removed.append(item)
    return removed


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
