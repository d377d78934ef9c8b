"""What a command reads and writes: output checks before any work (no output may replace an input
byte), the files written so far (removed when the command fails; each write is atomic on its own),
masks read beside volumes, and metrics tables.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
from pathlib import Path

import numpy as np
from IQTEnhanceApps.common.runtime import check_cancel
from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.files import atomic_path, write_json_atomic, write_text_atomic
from IQTEnhanceLib.volume import SUPPORTED_SUFFIXES, Volume, read_volume, write_volume


# -- files ------------------------------------------------------------------------------------------
def strip_volume_suffix(path) -> Path:
    """``a/b.nii.gz`` → ``a/b`` (the longest supported suffix removed)."""
    path = Path(path)
    name = path.name
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)])
    return path.with_suffix("")


def sidecar_path(path) -> Path:
    """The JSON sidecar of a volume file: ``lq.nii.gz`` → ``lq.json`` (as in BIDS)."""
    base = strip_volume_suffix(path)
    return base.with_name(base.name + ".json")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        with contextlib.suppress(OSError):
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs(outputs, inputs=()) -> None:
    """Fail before any work when an output cannot be written or would replace an input byte.

    ``outputs``: (role, path, kind) with kind ``volume`` (a detached header also writes its ``.raw``
    file), ``table``, ``model`` or ``sidecar``; ``inputs``: (role, path, kind) with kind ``volume``
    (its detached data file and its JSON sidecar are protected too) or ``file``.  Checked: the type of
    each output, that no output file is an input file, that no two outputs are one file, and that
    every output folder is writable (probed with a temporary file).  Stale temporary files of earlier
    killed writes of these outputs are removed.
    """
    from IQTEnhanceLib.fileformats import volume_files, written_files
    from IQTEnhanceLib.files import remove_stale_partials

    protected = []
    for role, path, kind in inputs:
        if path is None:
            continue
        path = Path(path)
        files = volume_files(path) if kind == "volume" else [path]
        protected += [(f, f"the {role} {path}" if f == path else f"{f.name}, part of the {role} {path}")
                      for f in files]
        if kind == "volume":
            protected.append((sidecar_path(path), f"the JSON sidecar of the {role} {path}"))
    planned = []
    for role, path, kind in outputs:
        if path is None:
            continue
        path = Path(path)
        if kind == "volume" and not any(path.name.lower().endswith(s) for s in SUPPORTED_SUFFIXES):
            raise InputError(f"{path}: unsupported output type; use one of {', '.join(SUPPORTED_SUFFIXES)}")
        if path.is_dir():
            raise InputError(f"{path}: is a folder, expected a file name")
        for f in (written_files(path) if kind == "volume" else [path]):
            for g, what in protected:
                if _same_file(f, g):
                    whose = f"{role} {path}" + (f" (its file {f.name})" if f != path else "")
                    raise InputError(f"refusing to overwrite {what}: {whose} would replace it; choose another "
                                     "output name")
            for other_role, g in planned:
                if _same_file(f, g):
                    raise InputError(f"{role} and {other_role} would both write {f}; give them different names")
            planned.append((role, f))
    for _, f in planned:
        _check_writable_folder(f)
    for _, f in planned:
        remove_stale_partials(f)


def _check_writable_folder(path: Path) -> None:
    """The nearest existing folder above ``path`` accepts a new file (a probe created and removed)."""
    import tempfile

    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{path}: cannot be created: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".iqt-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{path}: the folder {folder} is not writable ({exc.strerror or exc})") from None


class Outputs:
    """Files written by one command; :meth:`discard` removes them when the command fails, so a
    failed or interrupted run leaves no output behind (each write is atomic on its own)."""

    def __init__(self):
        self.written: list = []

    def volume(self, volume: Volume, path, dtype=np.float32) -> Path:
        check_cancel()
        write_volume(volume, path, dtype=dtype)
        self.written.append(Path(path))
        return Path(path)

    def json(self, data, path) -> Path:
        check_cancel()
        write_json_atomic(path, data)
        self.written.append(Path(path))
        return Path(path)

    def text(self, text: str, path) -> Path:
        check_cancel()
        path = write_text_atomic(path, text)
        self.written.append(path)
        return path

    def add(self, path) -> Path:
        self.written.append(Path(path))
        return Path(path)

    def figure(self, fig, path, dpi: int = 110) -> Path:
        """A matplotlib figure as PNG (atomic)."""
        check_cancel()
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
        self.written.append(Path(path))
        return Path(path)

    def discard(self) -> None:
        for path in self.written:
            with contextlib.suppress(OSError):
                path.unlink()
        self.written = []


# -- commands -----------------------------------------------------------------------------------------
def read_mask(path, like: Volume, what: str = "mask") -> Volume:
    mask = read_volume(path, allow_label_map=True)
    if not mask.same_grid(like, tol=1e-3):
        raise InputError(f"{path}: the {what} is not on the image's grid "
                         f"(size {list(mask.size_ijk)} vs {list(like.size_ijk)}, or spacing/origin/direction differ)")
    if not np.any(mask.array > 0):
        raise InputError(f"{path}: the {what} is empty")
    return mask


def format_metrics_table(rows: list) -> str:
    width = max([len("output")] + [len(r["name"]) for r in rows])
    lines = [f"{'output':{width}s}  {'NRMSE':>8s}  {'PSNR dB':>8s}  {'SSIM':>7s}  {'voxels':>9s}"]
    for r in rows:
        lines.append(f"{r['name']:{width}s}  {r['nrmse']:8.4f}  {r['psnr']:8.2f}  {r['ssim']:7.4f}  {r['voxels']:9d}")
    return "\n".join(lines)


def metrics_csv(rows: list, columns=("name", "output", "nrmse", "psnr", "ssim", "voxels")) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    return buf.getvalue()
