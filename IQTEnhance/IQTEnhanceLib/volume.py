"""Volumes: a voxel array with its physical geometry, read and written through SimpleITK.

Array order convention (the one place it is stated)
---------------------------------------------------
``Volume.array`` is indexed ``array[k, j, i]``: the slowest axis is the image's K index axis and
the fastest is I, exactly like Slicer's ``slicer.util.arrayFromVolume`` and SimpleITK's
``GetArrayFromImage``.  Geometry is stored in *IJK order* and in ITK's LPS world frame, as
in the file: ``spacing[0]`` is the spacing along I, ``direction[:, 0]`` is the unit LPS vector of
the I axis, and the physical position of voxel ``array[k, j, i]`` is::

    origin + direction @ (spacing * [i, j, k])

Helpers that name an axis use the letters ``"i"``, ``"j"``, ``"k"`` (the image's index axes, as in
the CLI's ``--axis``); :func:`array_axis` converts a letter to the numpy axis of ``array``.
The MRML glue converts LPS to Slicer's RAS; nothing in this library uses RAS.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from . import fileformats
from .errors import InputError
from .files import atomic_path, partial_folder

AXIS_LETTERS = ("i", "j", "k")
SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def ijk_index(axis: str | int) -> int:
    """Index of an IJK axis in geometry vectors (``spacing``, ``direction`` columns): i→0, j→1, k→2."""
    if isinstance(axis, (int, np.integer)) and 0 <= int(axis) <= 2:
        return int(axis)
    if isinstance(axis, str) and axis.lower() in AXIS_LETTERS:
        return AXIS_LETTERS.index(axis.lower())
    raise InputError(f"axis must be one of i, j, k (got {axis!r})")


def array_axis(axis: str | int) -> int:
    """numpy axis of ``Volume.array`` for an IJK axis: i→2, j→1, k→0 (the array is [k, j, i])."""
    return 2 - ijk_index(axis)


def axis_letter(axis: str | int) -> str:
    return AXIS_LETTERS[ijk_index(axis)]


@dataclasses.dataclass
class Volume:
    """A 3-D scalar image: ``array`` in [k, j, i] order plus LPS geometry in IJK order.

    ``spacing`` (3,) mm, ``origin`` (3,) mm LPS, ``direction`` (3, 3) with one unit column per
    index axis.  The array is never modified in place by this library.
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        self.array = np.asarray(self.array)
        self.spacing = np.asarray(self.spacing, dtype=float).reshape(3)
        self.origin = np.asarray(self.origin, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if self.array.ndim != 3:
            raise InputError(f"a volume must be 3-D, got an array of shape {self.array.shape}")
        if np.any(self.spacing <= 0):
            raise InputError(f"spacing must be positive, got {self.spacing.tolist()}")

    # -- geometry -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.array.shape

    @property
    def size_ijk(self) -> tuple:
        """Number of voxels along I, J, K (ITK/Slicer order)."""
        return tuple(int(n) for n in self.array.shape[::-1])

    def ijk_to_lps(self) -> np.ndarray:
        """4×4 matrix mapping homogeneous (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing[None, :]
        m[:3, 3] = self.origin
        return m

    def physical_point(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=float)
        return self.origin + self.direction @ (self.spacing * ijk)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, another array of the same shape."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.array.shape}")
        return Volume(array, self.spacing.copy(), self.origin.copy(), self.direction.copy())

    def same_grid(self, other: "Volume", tol: float = 1e-4) -> bool:
        """True when both volumes sample the same physical grid (shape, spacing, origin, direction)."""
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def geometry_dict(self) -> dict:
        return {
            "size_ijk": list(self.size_ijk),
            "spacing": self.spacing.tolist(),
            "origin": self.origin.tolist(),
            "direction": self.direction.tolist(),
        }

    # -- conversion -----------------------------------------------------------------------
    def to_sitk(self):
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array), isVector=False)
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(o) for o in self.origin])
        image.SetDirection([float(d) for d in self.direction.reshape(-1)])
        return image

    @classmethod
    def from_sitk(cls, image, *, source: str = "image") -> "Volume":
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise InputError(f"{source}: expected a 3-D volume, got a {image.GetDimension()}-D image")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"{source}: expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} "
                "components per voxel (vector, RGB or 4-D image)"
            )
        array = sitk.GetArrayFromImage(image)
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        return cls(array, image.GetSpacing(), image.GetOrigin(), direction)


def _has_supported_suffix(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in SUPPORTED_SUFFIXES)


def read_volume(path, *, allow_label_map: bool = False, check_finite: bool = True) -> Volume:
    """Read a 3-D scalar volume (NIfTI, NRRD, MetaImage) with its geometry.

    Raises :class:`InputError` with one clear sentence for a missing file, an unreadable
    file, a 2-D or 4-D/vector image, a label map (unless ``allow_label_map``), or NaN/Inf voxels.

    Note: SimpleITK reads NaN/Inf voxels of NIfTI files back as 0 (measured with SimpleITK 2.5.7),
    so such a NIfTI reaches the engine as zeros; NRRD and MetaImage keep them and are rejected here.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a volume file")
    # ITK zero-fills a truncated NIfTI and reads a 0 pixdim as 1 mm without an error: checked first
    fileformats.check_complete(path)
    fileformats.check_nifti_geometry(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        dimension = reader.GetDimension()
        components = reader.GetNumberOfComponents()
        size = reader.GetSize()
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable image ({_first_line(exc)})") from None
    if dimension == 4 and size[3] == 1:
        pass  # a 4-D file with a single time point is a 3-D volume written by some tools
    elif dimension != 3:
        raise InputError(f"{path}: expected a 3-D volume, got a {dimension}-D image of size {list(size)}")
    if components != 1:
        raise InputError(f"{path}: expected a scalar volume, got {components} components per voxel")
    if any(int(n) == 1 for n in size[:3]):
        raise InputError(f"{path}: expected a 3-D volume, got a single slice (size {list(size[:3])})")
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: could not read the image ({_first_line(exc)})") from None
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    volume = Volume.from_sitk(image, source=str(path))
    if not allow_label_map and looks_like_label_map(volume, path):
        raise InputError(
            f"{path}: looks like a label map (segmentation), not an intensity image; "
            "IQT enhances intensity volumes"
        )
    if check_finite:
        check_finite_volume(volume, str(path))
    return volume


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].strip() if text else type(exc).__name__


def looks_like_label_map(volume: Volume, path: Path | None = None) -> bool:
    """A label map: the file says so (seg.nrrd / .seg. / labelmap in the name), or an integer image
    with at most 2 distinct values (a binary mask) or with few distinct small integer values."""
    if path is not None:
        name = Path(path).name.lower()
        if ".seg." in name or "labelmap" in name or name.endswith("-label.nrrd") or name.endswith("_label.nii.gz"):
            return True
    array = volume.array
    if array.dtype.kind == "b":
        return True
    if array.dtype.kind not in "iu":
        return False
    sample = array.reshape(-1)
    if sample.size > 2_000_000:
        sample = sample[:: sample.size // 2_000_000 + 1]
    values = np.unique(sample)
    if values.size <= 2:
        return True
    if values.size > 1000:
        return False
    # Label maps are piecewise constant: measured on the CerebrA atlas, 97% of neighbouring
    # foreground voxel pairs along I share a value; on uint8 T1 scans (Colin27) about 8%.
    fg = array[..., :-1] != 0
    if not fg.any():
        return False
    equal = (array[..., 1:] == array[..., :-1]) & fg
    return equal.sum() / fg.sum() > 0.8


def check_finite_volume(volume: Volume, source: str = "volume") -> None:
    if volume.array.dtype.kind == "f" and not np.all(np.isfinite(volume.array)):
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        raise InputError(f"{source}: {bad} voxels are NaN or Inf; fix or mask them before enhancement")


def write_volume(volume: Volume, path, *, dtype=np.float32, overwrite: bool = True) -> Path:
    """Write atomically: to a temporary name beside ``path``, then rename, so a failed write
    leaves no half-written file. ``dtype=None`` keeps the array's type."""
    import SimpleITK as sitk

    path = Path(path)
    if not _has_supported_suffix(path):
        raise InputError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists (not overwriting)")
    path.parent.mkdir(parents=True, exist_ok=True)
    array = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    image = volume.with_array(array).to_sitk()
    compress = path.name.lower().endswith((".gz", ".nrrd"))
    if path.suffix.lower() in (".nhdr", ".mhd"):
        # A detached header names its data file, so both are written under their final names in a
        # temporary folder beside the target and moved into place, data first, header last.
        import shutil

        folder = partial_folder(path)
        try:
            _write(sitk, image, folder / path.name, compress, path)
            written = sorted(folder.iterdir(), key=lambda p: p.name == path.name)
            for item in written:
                os.replace(item, path.parent / item.name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return path
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix) as tmp:
        _write(sitk, image, tmp, compress, path)
    return path


def _write(sitk, image, target: Path, compress: bool, final: Path) -> None:
    """ITK reports a failed write (full disk, no permission) as a RuntimeError with a long trace:
    one OSError sentence instead."""
    try:
        sitk.WriteImage(image, str(target), useCompression=compress)
    except RuntimeError as exc:
        raise OSError(f"{final}: could not write the volume ({_first_line(exc)})") from None
