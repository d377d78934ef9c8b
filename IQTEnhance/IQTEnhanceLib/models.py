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


# A model file is read whole into memory, so its members' expanded size is bounded before reading:
# the shipped models expand to < 10 MB; a crafted 1.6 MB file could otherwise expand to gigabytes.
MAX_EXPANDED_BYTES = 512 << 20
MAX_EXPANSION_RATIO = 200      # expanded / stored, checked for members above 16 MB
_SHA256_HEX = frozenset("0123456789abcdef")


def _check_sizes(infos, where: str, what: str) -> None:
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > 16 << 20 and info.file_size > MAX_EXPANSION_RATIO * max(info.compress_size, 1):
            raise ModelError(f"{where}: {what} {info.filename} would expand {info.file_size // max(info.compress_size, 1)}"
                             f"× to {info.file_size / 2**20:.0f} MB; refusing a file built to exhaust memory")
    if total > MAX_EXPANDED_BYTES:
        raise ModelError(f"{where}: {what}s expand to {total / 2**20:.0f} MB, more than the "
                         f"{MAX_EXPANDED_BYTES >> 20} MB a model may hold; the file is corrupt or not a model")


def _validate_manifest(manifest, where: str) -> dict:
    """Every field the loader uses, with its type, or one :class:`ModelError` sentence."""
    if not isinstance(manifest, dict):
        raise ModelError(f"{where}: the model manifest is not a JSON object; the file is corrupt")
    if manifest.get("format") != FORMAT:
        raise ModelError(f"{where}: not an IQTEnhance model file")
    version = manifest.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelError(f"{where}: the manifest's format_version {version!r} is not an integer; the file is corrupt")
    if version > FORMAT_VERSION:
        raise ModelError(f"{where}: model format {version} is newer than this IQTEnhance ({FORMAT_VERSION}); "
                         "update IQTEnhance")
    for key in ("method", "name", "factor", "members"):
        if key not in manifest:
            raise ModelError(f"{where}: the model manifest lacks {key!r}; the file is corrupt")
    for key in ("method", "name"):
        if not isinstance(manifest[key], str) or not manifest[key]:
            raise ModelError(f"{where}: the manifest's {key} {manifest[key]!r} is not a name; the file is corrupt")
    factor = manifest["factor"]
    if isinstance(factor, bool) or not isinstance(factor, int) or not 2 <= factor <= 16:
        raise ModelError(f"{where}: the manifest's factor {factor!r} is not an integer from 2 to 16; "
                         "the file is corrupt")
    members = manifest["members"]
    if not isinstance(members, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 and set(v) <= _SHA256_HEX
            for k, v in members.items()):
        raise ModelError(f"{where}: the manifest's members are not a map of names to SHA-256 digests; "
                         "the file is corrupt")
    if "arrays.npz" not in members:
        raise ModelError(f"{where}: the model lacks its arrays (arrays.npz); the file is corrupt")
    for key in ("params", "training"):
        if not isinstance(manifest.get(key, {}), dict):
            raise ModelError(f"{where}: the manifest's {key} is not a JSON object; the file is corrupt")
    return manifest


def _read_arrays(data: bytes, where: str) -> dict:
    """The numeric arrays of ``arrays.npz`` (no pickles, no object arrays, bounded size)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as npz_zip:
            _check_sizes(npz_zip.infolist(), where, "array")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ModelError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError) as exc:
        raise ModelError(f"{where}: arrays.npz is not a numpy archive of plain arrays ({_first_line(exc)})") from None
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ModelError(f"{where}: the array {name} holds {array.dtype} values, not numbers; the file is corrupt")
    return arrays


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_model(path) -> ModelFile:
    """Read and verify a model file; any fault is one :class:`ModelError` sentence."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, expected a model file (.iqtm)")
    where = path.name
    try:
        with zipfile.ZipFile(path) as z:
            _check_sizes(z.infolist(), where, "member")
            manifest = _validate_manifest(json.loads(z.read("manifest.json")), where)
            members = {}
            for name, digest in manifest["members"].items():
                data = z.read(name)
                if _sha256(data) != digest:
                    raise ModelError(f"{where}: member {name} fails its checksum; the file is corrupt")
                members[name] = data
    except ModelError:
        raise
    except KeyError as exc:
        raise ModelError(f"{where}: the file lacks the member {exc}; it is corrupt or not an IQTEnhance model") from None
    except (zipfile.BadZipFile, ValueError, TypeError, AttributeError, OSError, EOFError, RuntimeError) as exc:
        raise ModelError(f"{where}: corrupt or not an IQTEnhance model file ({_first_line(exc)})") from None
    arrays = _read_arrays(members.pop("arrays.npz"), where)
    return ModelFile(
        method=manifest["method"], name=manifest["name"], factor=manifest["factor"],
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


CONTRASTS = ("t1", "t2")


def pick_shipped_model(method: str, factor: int | None = None, contrast: str | None = None) -> Path:
    """The shipped model for a scan (``--model auto``): of the requested contrast (default T1), the
    one whose factor matches the scan's thick / in-plane spacing ratio, the method's default among
    equals; without a match in factor, that contrast's default; without that contrast, the
    method's default model."""
    contrast = (contrast or "t1").lower()
    if contrast not in CONTRASTS:
        raise ModelError(f"contrast must be one of {', '.join(CONTRASTS)} (got {contrast!r})")
    entries = shipped_models(method)
    same = [e for e in entries if e.get("contrast", "t1") == contrast]
    for pool in ([e for e in same if factor is not None and int(e["factor"]) == int(factor)], same):
        if pool:
            entry = next((e for e in pool if e.get("default")), sorted(pool, key=lambda e: e["name"])[0])
            return shipped_models_dir() / entry["file"]
    return default_model_path(method)


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
        "contrast": model.training.get("contrast", "t1"),
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
