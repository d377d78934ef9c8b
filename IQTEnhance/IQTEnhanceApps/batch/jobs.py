"""Which volumes a batch enhances: inputs from a folder, a glob or a CSV, one job per volume with
its output name, and the method settings every job shares.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import glob as globlib
import io
import os
from pathlib import Path
from typing import Optional

from IQTEnhanceLib.errors import InputError
from IQTEnhanceLib.volume import SUPPORTED_SUFFIXES

DONE, SKIPPED, FAILED, CANCELLED = "done", "skipped", "failed", "cancelled"
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


# -- inputs and output names ----------------------------------------------------------------
@dataclasses.dataclass
class BatchJob:
    """One volume of the cohort. Paths are absolute strings (they travel to the workers)."""

    name: str
    input: str
    output: str
    sidecar: str
    reference: Optional[str] = None
    mask: Optional[str] = None
    model: Optional[str] = None          # per-row model (CSV column ``model``); None: the run's model
    model_sha256: Optional[str] = None


def volume_stem(path) -> str:
    """File name without its volume suffix: ``sub-01_T1w.nii.gz`` → ``sub-01_T1w``."""
    name = Path(path).name
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and any(
        path.name.lower().endswith(s) for s in SUPPORTED_SUFFIXES)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def collect_inputs(inputs, outdir=None) -> list:
    """Rows ``{"input", "reference", "mask", "model"}`` (absolute paths or None) from INPUTS:

    * a folder: every volume file in it (not recursive; hidden files skipped);
    * a CSV file: column ``input`` (required), optional ``reference``, ``mask`` and ``model``;
      relative paths are relative to the CSV's folder; empty cells mean "none";
    * anything else: a glob pattern (``**`` recurses), e.g. ``'data/sub-*/anat/*_T1w.nii.gz'``.

    Files under ``outdir`` are never taken as inputs (so OUTDIR may sit inside the input folder).
    """
    text = str(inputs)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_volume_file(p))
        rows = [{"input": str(p.resolve())} for p in files]
        where = f"folder {path}"
    elif path.is_file() and path.suffix.lower() == ".csv":
        rows = _read_csv(path)
        where = f"CSV {path}"
    elif path.is_file():
        rows = [{"input": str(path.resolve())}]
        where = str(path)
    else:
        matches = sorted(globlib.glob(os.path.expanduser(text), recursive=True))
        rows = [{"input": str(Path(m).resolve())} for m in matches if Path(m).is_file()]
        where = f"pattern {text!r}"
        if not rows and not any(c in text for c in "*?["):
            raise InputError(f"{text}: no such file or folder")
    if outdir is not None:
        rows = [r for r in rows if not _inside(Path(r["input"]), Path(outdir))]
    if not rows:
        raise InputError(f"{where} holds no volume to enhance (looked for {', '.join(SUPPORTED_SUFFIXES)})")
    for row in rows:
        for key in ("reference", "mask", "model"):
            row.setdefault(key, None)
    return rows


def _read_csv(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the CSV ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise InputError(f"{path}: the CSV is empty")
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames}
    if "input" not in columns:
        raise InputError(f"{path}: the CSV needs an 'input' column (found: {', '.join(reader.fieldnames)})")
    base = path.resolve().parent
    rows = []
    for line, record in enumerate(reader, start=2):
        row = {}
        for key in ("input", "reference", "mask", "model"):
            value = (record.get(columns[key]) or "").strip() if key in columns else ""
            row[key] = str((base / Path(value).expanduser()).resolve()) if value else None
        if row["input"] is None:
            if any((v or "").strip() for v in record.values() if isinstance(v, str)):
                raise InputError(f"{path}, line {line}: the 'input' cell is empty")
            continue  # a blank line
        rows.append(row)
    return rows


def plan_jobs(rows: list, outdir, method: str, suffix: str = ".nii.gz") -> list:
    """Output names follow the inputs: ``OUTDIR/<stem>_<method><suffix>``.  Inputs sharing a file
    name (``sub-01/anat/T1w.nii.gz``, ``sub-02/anat/T1w.nii.gz``) get their folders in the name
    (``sub-01_anat_T1w_<method>``) so that no output overwrites another."""
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"output suffix must be one of {', '.join(OUTPUT_SUFFIXES)} (got {suffix!r})")
    outdir = Path(outdir).expanduser().resolve()
    paths = [Path(r["input"]) for r in rows]
    stems = [volume_stem(p) for p in paths]
    counts = collections.Counter(stems)
    if any(n > 1 for n in counts.values()):
        common = Path(os.path.commonpath([str(p.parent) for p in paths]))
        for i, p in enumerate(paths):
            if counts[stems[i]] > 1:
                parts = p.parent.relative_to(common).parts
                stems[i] = "_".join(parts + (stems[i],))
    seen = collections.Counter()
    names = []
    for stem in stems:  # the same file listed twice (e.g. with two references)
        seen[stem] += 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    jobs = []
    for row, name in zip(rows, names):
        stem = f"{name}_{method}"
        jobs.append(BatchJob(
            name=name, input=row["input"], output=str(outdir / f"{stem}{suffix}"),
            sidecar=str(outdir / f"{stem}.json"), reference=row.get("reference"), mask=row.get("mask"),
            model=row.get("model"),
        ))
    return jobs

# -- the client side: settings, cluster, run, report -------------------------------------------
def resolve_settings(method: str, *, model=None, factor=None, axis=None, device: str = "auto",
                     options: Optional[dict] = None, threads: Optional[int] = None, force: bool = False,
                     save_extras: bool = False, require_model: bool = True) -> dict:
    """Check the run's arguments once, before any worker starts: unknown method or option, a model
    of another method or a corrupt model file is one clear error here, not one per volume."""
    from IQTEnhanceLib.devices import DEVICES
    from IQTEnhanceLib.methods import get_method
    from IQTEnhanceLib.models import default_model_path, load_model

    spec = get_method(method)
    # defaults filled in, so that giving an option its default value does not redo a cohort
    resolved = spec.validate_options(options)
    if str(device or "auto").lower().split(":")[0] not in DEVICES + ("gpu",):
        raise InputError(f"device must be one of {', '.join(DEVICES)} (got {device!r})")
    model_path, model_sha = None, None
    if isinstance(model, str) and model == "self":
        from IQTEnhanceLib.selfsup import SELF, check_method

        check_method(method)          # each volume learns its own model (recorded in its sidecar)
        model_path = SELF
    elif spec.needs_model and (model is not None or require_model):
        model_path = Path(model).expanduser().resolve() if model is not None else default_model_path(method)
        loaded = load_model(model_path)
        loaded.check_fits(method=method, factor=factor)
        model_path, model_sha = str(model_path), loaded.checksum
    elif model is not None:
        raise InputError(f"method {method} takes no model file")
    return {"method": method, "model": model_path, "model_sha256": model_sha,
            "factor": int(factor) if factor is not None else None,
            "axis": None if axis in (None, "auto") else str(axis).lower(), "device": device or "auto",
            "options": resolved, "threads": threads, "force": bool(force), "save_extras": bool(save_extras),
            "needs_torch": spec.needs_torch}
