"""Model files: one zip file (``.iqtm``) per trained model holding a JSON manifest and payload members.

Layout::

    manifest.json   {"format": "iqtenhance-model", "format_version": 1, "method", "name", "factor",
                     "params": {...every method parameter...}, "training": {...provenance: data,
                     simulation settings, date, library version...}, "members": {name: sha256}}
    arrays.npz      numpy arrays (dictionaries, regression matrices, ...)
    <other>         opaque bytes (torch state_dict, ...)

Loading verifies the format and every member's SHA-256 and raises :class:`ModelError` with one
sentence for a missing, corrupt, foreign or mismatched file.  The shipped models live in
``IQTEnhance/Resources/Models/`` and are listed in its ``manifest.json`` (name, method, factor,
training data, file checksum).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import ModelError
from .files import atomic_path, json_default

FORMAT = "iqtenhance-model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".iqtm"


def library_version() -> str:
    from . import __version__

    return __version__


@dataclasses.dataclass
class ModelFile:
    method: str
    name: str
    factor: int
    params: dict
    arrays: dict
    blobs: dict = dataclasses.field(default_factory=dict)
    training: dict = dataclasses.field(default_factory=dict)
    path: Path | None = None
    checksum: str = ""

    def describe(self) -> str:
        data = self.training.get("data", "?")
        return f"{self.name} ({self.method}, ×{self.factor}, trained on {data})"

    def check_fits(self, method: str | None = None, factor: int | None = None) -> None:
        """Fail clearly when the model is for another method or another factor."""
        where = f"{self.path.name}: " if self.path else ""
        if method is not None and method != self.method:
            raise ModelError(f"{where}this is a {self.method} model, not a {method} model")
        if factor is not None and int(factor) != int(self.factor):
            raise ModelError(
                f"{where}the model was trained for ×{self.factor} up-sampling, but ×{factor} was asked for"
            )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_checksum(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(path, model: ModelFile) -> Path:
    """Write atomically (temporary name, then rename)."""
    path = Path(path)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in model.arrays.items()})
    members = {"arrays.npz": buf.getvalue()}
    members.update(model.blobs)
    training = dict(model.training)
    training.setdefault("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    training.setdefault("library_version", library_version())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": model.method,
        "name": model.name,
        "factor": int(model.factor),
        "params": model.params,
        "training": training,
        "members": {k: _sha256(v) for k, v in members.items()},
    }
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=2, default=json_default))
            for name, data in members.items():
                z.writestr(name, data)
    return path


def load_model(path) -> ModelFile:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            if manifest.get("format") != FORMAT:
                raise ModelError(f"{path.name}: not an IQTEnhance model file")
            if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
                raise ModelError(
                    f"{path.name}: model format {manifest['format_version']} is newer than this IQTEnhance "
                    f"({FORMAT_VERSION}); update IQTEnhance"
                )
            for key in ("method", "name", "factor", "members"):
                if key not in manifest:
                    raise ModelError(f"{path.name}: the model manifest lacks {key!r}; the file is corrupt")
            members = {}
            for name, digest in manifest["members"].items():
                data = z.read(name)
                if _sha256(data) != digest:
                    raise ModelError(f"{path.name}: member {name} fails its checksum; the file is corrupt")
                members[name] = data
    except ModelError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, OSError, EOFError) as exc:
        raise ModelError(f"{path.name}: corrupt or not an IQTEnhance model file ({exc})") from None
    with np.load(io.BytesIO(members.pop("arrays.npz")), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return ModelFile(
        method=manifest["method"], name=manifest["name"], factor=int(manifest["factor"]),
        params=manifest.get("params", {}), arrays=arrays, blobs=members,
        training=manifest.get("training", {}), path=path, checksum=file_checksum(path),
    )


# -- shipped models ---------------------------------------------------------------------------
def shipped_models_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "Resources" / "Models"


def shipped_manifest() -> list:
    """Entries of ``Resources/Models/manifest.json``: name, method, factor, file, sha256, training data."""
    index = shipped_models_dir() / "manifest.json"
    if not index.exists():
        return []
    return json.loads(index.read_text())["models"]


def shipped_models(method: str | None = None) -> list:
    return [m for m in shipped_manifest() if method is None or m["method"] == method]


def default_model_path(method: str) -> Path:
    """The shipped model of ``method`` marked default (else the first one)."""
    entries = shipped_models(method)
    if not entries:
        raise ModelError(f"no shipped model for method {method!r}; train one with `iqt-enhance train --method {method}`")
    entry = next((e for e in entries if e.get("default")), entries[0])
    return shipped_models_dir() / entry["file"]


def register_shipped_model(path, *, default: bool = True) -> dict:
    """Add or update a model file's entry in ``Resources/Models/manifest.json``."""
    path = Path(path)
    model = load_model(path)
    index = shipped_models_dir() / "manifest.json"
    entries = shipped_manifest()
    entry = {
        "name": model.name, "method": model.method, "factor": model.factor, "file": path.name,
        "sha256": model.checksum, "size_bytes": path.stat().st_size,
        "training_data": model.training.get("data"), "default": default,
        "model_card": model.training.get("model_card", ""),
    }
    entries = [e for e in entries if e["file"] != path.name]
    if default:
        for e in entries:
            if e["method"] == model.method:
                e["default"] = False
    entries.append(entry)
    entries.sort(key=lambda e: (e["method"], e["name"]))
    index.write_text(json.dumps({"models": entries}, indent=2) + "\n")
    return entry
