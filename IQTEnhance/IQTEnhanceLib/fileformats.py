"""What ITK does not check in a volume file, checked here from the header bytes.

ITK (SimpleITK 2.5) reads some broken files without an error, so this module reads the headers
itself (NIfTI-1/2, MetaImage, NRRD) and answers three questions:

* **Is the file complete?**  ITK's NIfTI reader zero-fills the voxels missing from a truncated
  ``.nii`` or ``.nii.gz`` and returns no error (the output then looks plausible); its MetaImage
  reader reports a truncated ``.mha`` as "No such file or directory".  :func:`check_complete`
  compares the data length with what the header promises (for gzip, it decompresses the stream
  and notices one that ends early) and raises :class:`InputError` with the word "truncated".
* **Does the NIfTI header agree with itself?**  A pixdim of 0 is read by ITK as 1 mm whatever the
  sform says, so the output would cover the wrong extent.  :func:`check_nifti_geometry` refuses a
  zero pixdim, and a pixdim that disagrees with the sform's voxel size.
* **Which files does a volume consist of?**  A detached header (``.mhd``, ``.nhdr``) names a data
  file beside it; writing ``x.mhd`` or ``x.nhdr`` also (re)writes ``x.raw``.  :func:`volume_files`
  lists the files an existing volume reads, :func:`written_files` those a write creates, so that
  the front ends can refuse an output that would replace any input byte.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import InputError

_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                1536: 16, 1792: 16, 2048: 32, 2304: 4}
_META_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}
_NRRD_BYTES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
        "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
        "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
_CHUNK = 1 << 22


def _name(path: Path) -> str:
    return path.name.lower()


def _kind(path: Path) -> str:
    name = _name(path)
    for suffix, kind in ((".nii.gz", "nifti-gz"), (".nii", "nifti"), (".mha", "meta"), (".mhd", "meta"),
                         (".nrrd", "nrrd"), (".nhdr", "nrrd")):
        if name.endswith(suffix):
            return kind
    return "other"


# -- files of a volume -------------------------------------------------------------------------------
def written_files(path) -> list:
    """Every file ``write_volume(volume, path)`` creates or replaces: the file itself and, for a
    detached header (``.mhd``, ``.nhdr``; written uncompressed), the ``.raw`` data file beside it."""
    path = Path(path)
    name = _name(path)
    if name.endswith((".mhd", ".nhdr")):
        return [path, path.with_suffix(".raw")]
    return [path]


def volume_files(path) -> list:
    """The files an existing volume consists of: the header and the data file(s) it names."""
    path = Path(path)
    files = [path]
    if not path.is_file():
        return files
    kind = _kind(path)
    try:
        if kind == "meta":
            header = _meta_header(path)
            name = header.get("ElementDataFile", "LOCAL")
            if name.upper() != "LOCAL" and " " not in name.strip() and name.upper() != "LIST":
                files.append(path.parent / name)
        elif kind == "nrrd":
            header = _nrrd_header(path)
            name = header.get("data file") or header.get("datafile")
            if name and " " not in name.strip() and name.upper() != "LIST":
                files.append(path.parent / name)
    except (OSError, ValueError):
        pass
    return files


# -- completeness ------------------------------------------------------------------------------------
def check_complete(path) -> None:
    """Raise :class:`InputError` ("... is truncated ...") when the file holds less voxel data than its
    header promises.  Formats and encodings this module does not parse are left to ITK."""
    path = Path(path)
    kind = _kind(path)
    if kind in ("nifti", "nifti-gz"):
        _check_nifti(path)
    elif kind == "meta":
        _check_meta(path)
    elif kind == "nrrd":
        _check_nrrd(path)


def _truncated(path: Path, what: str) -> InputError:
    return InputError(f"{path}: the file is truncated ({what}); it was not completely written or copied")


def _gunzip_length(path: Path, offset: int = 0, limit: int | None = None) -> int:
    """Decompressed length of the gzip or zlib stream starting at ``offset``; an early end raises
    EOFError, a corrupt stream zlib.error/OSError.  Stops counting once ``limit`` bytes are seen."""
    total = 0
    with open(path, "rb") as raw:
        raw.seek(offset)
        magic = raw.read(2)
        raw.seek(offset)
        if magic == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
            while True:
                block = stream.read(_CHUNK)
                if not block:
                    return total
                total += len(block)
                if limit is not None and total >= limit:
                    return total
        decomp = zlib.decompressobj()
        while True:
            block = raw.read(_CHUNK)
            if not block:
                if not decomp.eof:
                    raise EOFError("the compressed stream ends early")
                return total
            total += len(decomp.decompress(block))
            if decomp.eof or (limit is not None and total >= limit):
                return total


def _nifti_header(path: Path) -> dict:
    """The fields of a NIfTI-1 or NIfTI-2 header this module needs (raises ValueError if not NIfTI)."""
    opener = gzip.open if _name(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read(540)
    if len(raw) < 348:
        raise ValueError("shorter than a NIfTI header")
    for endian in "<>":
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size == 348:
            dim = struct.unpack(endian + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
            pixdim = struct.unpack(endian + "8f", raw[76:108])
            vox_offset = struct.unpack(endian + "f", raw[108:112])[0]
            qform_code, sform_code = struct.unpack(endian + "2h", raw[252:256])
            srow = np.array(struct.unpack(endian + "12f", raw[280:328]), dtype=float).reshape(3, 4)
            break
        if size == 540 and len(raw) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
            dim = struct.unpack(endian + "8q", raw[16:80])
            pixdim = struct.unpack(endian + "8d", raw[104:168])
            vox_offset = struct.unpack(endian + "q", raw[168:176])[0]
            qform_code, sform_code = struct.unpack(endian + "2i", raw[344:352])
            srow = np.array(struct.unpack(endian + "12d", raw[400:496]), dtype=float).reshape(3, 4)
            break
    else:
        raise ValueError("not a NIfTI header")
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise ValueError(f"invalid dimension count {ndim}")
    shape = [int(n) for n in dim[1:ndim + 1]]
    bits = int(bitpix) if bitpix > 0 else 8 * _NIFTI_BYTES.get(int(datatype), 0)
    return {"shape": shape, "bits": bits, "pixdim": [float(p) for p in pixdim[1:4]], "vox_offset": int(vox_offset),
            "qform_code": int(qform_code), "sform_code": int(sform_code), "srow": srow,
            "header_size": int(size)}


def _check_nifti(path: Path) -> None:
    try:
        h = _nifti_header(path)
    except (OSError, EOFError, zlib.error, ValueError, struct.error):
        return  # not parsable here: ITK reports it
    if h["bits"] <= 0 or any(n < 0 for n in h["shape"]):
        return
    offset = max(h["vox_offset"], h["header_size"] if _name(path).endswith((".nii", ".nii.gz")) else 0)
    expected = offset + int(np.prod(h["shape"], dtype=np.int64)) * h["bits"] // 8
    if _name(path).endswith(".gz"):
        try:
            got = _gunzip_length(path, limit=expected)
        except EOFError:
            raise _truncated(path, "the gzip stream ends before its end marker") from None
        except (zlib.error, OSError) as exc:
            raise InputError(f"{path}: the gzip stream is corrupt ({exc})") from None
    else:
        got = path.stat().st_size
    if got < expected:
        raise _truncated(path, f"{got} of the {expected} bytes its header promises")


def check_nifti_geometry(path) -> None:
    """Refuse a NIfTI whose voxel size is 0 or disagrees with its sform (ITK would read 1 mm, or the
    pixdim, and put the output on the wrong physical extent)."""
    path = Path(path)
    if _kind(path) not in ("nifti", "nifti-gz"):
        return
    try:
        h = _nifti_header(path)
    except (OSError, EOFError, zlib.error, ValueError, struct.error):
        return
    spatial = min(3, len(h["shape"]))
    pixdim = h["pixdim"][:spatial]
    zero = [("ijk"[a], p) for a, p in enumerate(pixdim) if not np.isfinite(p) or p == 0]
    sform = np.linalg.norm(h["srow"][:, :3], axis=0)[:spatial]
    if zero:
        said = f"; its sform says {np.round(sform, 4).tolist()} mm" if h["sform_code"] > 0 else ""
        raise InputError(f"{path}: the header's voxel size (pixdim) is {pixdim} mm, 0 along "
                         f"{', '.join(a for a, _ in zero)}{said}; ITK would read 1 mm there and the output "
                         "would cover the wrong extent: fix the header's pixdim")
    if h["sform_code"] > 0 and np.all(sform > 0):
        mismatch = np.abs(np.abs(pixdim) - sform) > 1e-3 * np.maximum(sform, 1e-6) + 1e-5
        if np.any(mismatch):
            raise InputError(f"{path}: the header's voxel size (pixdim {np.round(np.abs(pixdim), 4).tolist()} mm) "
                             f"disagrees with its sform ({np.round(sform, 4).tolist()} mm); the geometry is "
                             "ambiguous: fix the header so that both agree")


def _text_header(path: Path, limit: int = 65536) -> bytes:
    """The first ``limit`` bytes of a file with a text header (MetaImage, NRRD)."""
    with open(path, "rb") as f:
        head = f.read(limit)
    return head


def _meta_header(path: Path) -> dict:
    head = _text_header(path)
    fields, length = {}, 0
    for line in head.split(b"\n"):
        length += len(line) + 1
        text = line.decode("latin-1").strip()
        if "=" in text:
            key, value = text.split("=", 1)
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    else:
        raise ValueError("no ElementDataFile line")
    fields["_header_bytes"] = length
    return fields


def _data_file(path: Path, name, local_offset: int):
    """(data file, offset of the voxels in it) for a header naming ``name`` (None/LOCAL: the header's
    own file); None for a list or pattern of files (left to ITK)."""
    if not name or name.upper() == "LOCAL":
        return path, local_offset
    if " " in name.strip() or name.upper() == "LIST":
        return None
    data = path.parent / name.strip()
    if not data.is_file():
        raise InputError(f"{path}: its data file {data.name} is missing")
    return data, 0


def _check_length(path: Path, data: Path, offset: int, expected: int, compressed: bool, skip: int = 0) -> None:
    """Truncated unless the (decompressed) voxel data hold ``expected`` bytes."""
    if compressed:
        try:
            got = _gunzip_length(data, offset, limit=expected)
        except EOFError:
            raise _truncated(path, "the compressed stream ends early") from None
        except (zlib.error, OSError):
            return  # a corrupt stream: ITK reports it
    else:
        got = data.stat().st_size - offset - max(skip, 0)
    if got < expected:
        raise _truncated(path, f"{got} of the {expected} data bytes its header promises")


def _check_meta(path: Path) -> None:
    try:
        h = _meta_header(path)
        dims = [int(v) for v in h["DimSize"].split()]
        item = _META_BYTES[h["ElementType"]] * int(h.get("ElementNumberOfChannels", "1"))
    except (OSError, ValueError, KeyError):
        return
    located = _data_file(path, h.get("ElementDataFile", "LOCAL"), h["_header_bytes"])
    if located is None:
        return
    data, offset = located
    compressed = h.get("CompressedData", "False").lower() == "true"
    declared = int(h.get("CompressedDataSize", "0") or 0)
    if compressed and declared and data.stat().st_size - offset < declared:
        raise _truncated(path, f"{data.stat().st_size - offset} of the {declared} compressed bytes its header promises")
    _check_length(path, data, offset, int(np.prod(dims, dtype=np.int64)) * item, compressed,
                  skip=int(h.get("HeaderSize", "0") or 0))


def _nrrd_header(path: Path) -> dict:
    head = _text_header(path)
    if not head.startswith(b"NRRD"):
        raise ValueError("not NRRD")
    fields, length = {}, 0
    for n, line in enumerate(head.split(b"\n")):
        length += len(line) + 1
        text = line.decode("latin-1").rstrip("\r")
        if n and text == "":
            break
        if text.startswith("#") or ":" not in text or n == 0:
            continue
        key, value = text.split(":", 1)
        fields[key.strip().lower()] = value.lstrip("=").strip()
    fields["_header_bytes"] = length
    return fields


def _check_nrrd(path: Path) -> None:
    try:
        h = _nrrd_header(path)
        sizes = [int(v) for v in h["sizes"].split()]
        item = next(n for n, names in _NRRD_BYTES.items() if h["type"].lower() in names)
    except (OSError, ValueError, KeyError, StopIteration):
        return
    encoding = h.get("encoding", "raw").lower()
    located = _data_file(path, h.get("data file") or h.get("datafile"), h["_header_bytes"])
    if located is None or encoding not in ("raw", "gzip", "gz"):
        return
    _check_length(path, *located, int(np.prod(sizes, dtype=np.int64)) * item, encoding != "raw")
