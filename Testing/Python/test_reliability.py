"""Reliability through the command line: no silently wrong output, no overwritten input, one line
per fault.  Every test checks the exit code, that the error is a single line (no traceback), that
every input file is byte-identical afterwards and that no file was left behind."""
import gzip
import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from IQTEnhanceLib import api
from IQTEnhanceApps.cli import main
from IQTEnhanceLib.grid import hq_geometry
from IQTEnhanceLib.methods import METHOD_MODULES
from IQTEnhanceLib.models import default_model_path, load_model, save_model
from IQTEnhanceLib.simulate import SimulationParameters, simulate
from IQTEnhanceLib.volume import Volume, read_volume, write_volume


# -- helpers -------------------------------------------------------------------------------------
def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one line of an error: no traceback, no 'internal error', nothing else on stderr."""
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("iqt-enhance: error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict:
    """sha256 of every file under ``folder`` (hidden ones included)."""
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, folder: Path, *args, code: int = 2) -> str:
    """Run a command that must fail; assert one line, no byte of ``folder`` changed, nothing left."""
    before = snapshot(folder)
    got, _, err = run(capsys, *args, "-q")
    line = error_line(err)
    assert got == code, (args, got, err)
    assert snapshot(folder) == before, f"{args} changed or left files"
    return line


@pytest.fixture
def lq_file(colin, tmp_path):
    """A real LQ volume (Colin27 crop, ×4 along k) as .nii.gz in a fresh folder."""
    hq, mask = colin
    lq, _ = simulate(hq, SimulationParameters(factor=4, axis="k", snr=20.0, seed=3), mask=mask)
    path = write_volume(lq, tmp_path / "in" / "lq.nii.gz")
    write_volume(hq, tmp_path / "in" / "hq.nii.gz")
    return path


def _truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


# -- 1. truncated files --------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_nifti_is_refused_by_every_command(lq_file, tmp_path, capsys, suffix):
    folder = lq_file.parent
    whole = write_volume(read_volume(lq_file), folder / f"whole{suffix}")
    bad = _truncate(whole, folder / f"cut{suffix}", 0.8)
    hq = folder / "hq.nii.gz"
    out = tmp_path / "out"
    commands = [
        ["enhance", bad, out / "x.nii.gz", "--method", "trilinear"],
        ["evaluate", bad, hq],
        ["simulate", _truncate(hq, folder / f"hqcut{suffix}", 0.9), out / "lq.nii.gz"],
        ["train", "--method", "linear", "--hq", folder / f"hqcut{suffix}", "--out", out / "m.iqtm"],
    ]
    for command in commands:
        line = refused(capsys, folder, *command)
        assert "truncated" in line, (command, line)
    assert not out.exists()
    # ITK itself reads the truncated file without complaint (zero-filled): the check is ours
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(bad))).shape == read_volume(whole).array.shape


def test_truncated_metaimage_says_truncated(lq_file, tmp_path, capsys):
    folder = lq_file.parent
    for name, compress in (("plain.mha", False), ("packed.mha", True)):
        whole = folder / name
        sitk.WriteImage(read_volume(lq_file).to_sitk(), str(whole), useCompression=compress)
        _truncate(whole, whole, 0.7)
        line = refused(capsys, folder, "enhance", whole, tmp_path / "o.nii.gz", "--method", "trilinear")
        assert "truncated" in line and "No such file" not in line


# -- 2-4. outputs that would replace an input byte ----------------------------------------------------
def test_detached_output_never_overwrites_the_inputs_data_file(lq_file, capsys):
    folder = lq_file.parent
    write_volume(read_volume(lq_file), folder / "det.mhd")      # writes det.mhd + det.raw
    assert (folder / "det.raw").exists()
    line = refused(capsys, folder, "enhance", folder / "det.mhd", folder / "det.nhdr", "--method", "trilinear")
    assert "det.raw" in line and "refusing to overwrite" in line


def test_trust_map_equal_to_out_is_refused(lq_file, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    line = refused(capsys, tmp_path, "enhance", lq_file, out, "--method", "srep", "--trust-map", out)
    assert "--trust-map" in line and "both write" in line
    # the same with a detached header whose data file is the output's
    line = refused(capsys, tmp_path, "enhance", lq_file, tmp_path / "o.mhd", "--method", "srep",
                   "--trust-map", tmp_path / "o.nhdr")
    assert "o.raw" in line


def test_output_whose_sidecar_is_the_inputs_sidecar_is_refused(lq_file, capsys):
    folder = lq_file.parent
    (folder / "lq.json").write_text(json.dumps({"scanner": "0.36 T"}))
    line = refused(capsys, folder, "enhance", lq_file, folder / "lq.nrrd", "--method", "trilinear")
    assert "sidecar" in line and "lq.json" in line
    (folder / "lq.json").unlink()   # also when the input has no sidecar yet: it would look like one
    line = refused(capsys, folder, "enhance", lq_file, folder / "lq.nrrd", "--method", "trilinear")
    assert "sidecar" in line
    # simulate: the LQ's sidecar must not replace the HQ's
    line = refused(capsys, folder, "simulate", folder / "hq.nii.gz", folder / "hq.mha")
    assert "sidecar" in line


# -- 5. NIfTI geometry that ITK reads wrongly ---------------------------------------------------------
def test_zero_pixdim_or_pixdim_disagreeing_with_the_sform_is_refused(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    data = (np.random.default_rng(0).random((20, 20, 6)) * 100).astype(np.float32)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    for name, pixdim in (("zero.nii.gz", 0.0), ("disagree.nii.gz", 2.0)):
        image = nib.Nifti1Image(data, affine)
        image.header["pixdim"][3] = pixdim
        nib.save(image, tmp_path / name)
        line = refused(capsys, tmp_path, "enhance", tmp_path / name, tmp_path / "o" / "x.nii.gz",
                       "--method", "trilinear")
        assert "pixdim" in line and "sform" in line and "4.0" in line
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "fine.nii.gz")
    code, _, _ = run(capsys, "enhance", tmp_path / "fine.nii.gz", tmp_path / "o" / "x.nii.gz",
                     "--method", "trilinear", "-q")
    assert code == 0
    assert np.allclose(read_volume(tmp_path / "o" / "x.nii.gz").spacing, [1.0, 1.0, 1.0])


# -- 6. write and memory failures ---------------------------------------------------------------------
def test_output_folder_problems_are_found_before_any_computation(lq_file, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file")
    line = refused(capsys, tmp_path, "enhance", lq_file, blocker / "sub" / "o.nii.gz", "--method", "trilinear")
    assert "is a file, not a folder" in line

    calls = []
    monkeypatch.setattr(api, "enhance", lambda *a, **k: calls.append(1))
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    line = refused(capsys, tmp_path, "enhance", lq_file, tmp_path / "ro" / "o.nii.gz", "--method", "trilinear")
    assert "not writable" in line and "Read-only" in line
    assert not calls, "the method ran although the output could not be written"


def test_disk_full_and_memory_error_are_one_line(lq_file, tmp_path, capsys, monkeypatch):
    def disk_full(image, name, *args, **kwargs):
        Path(name).write_bytes(b"half")
        raise RuntimeError("Exception thrown in SimpleITK WriteImage: ...\nitk::ERROR: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", disk_full)
    line = refused(capsys, tmp_path, "enhance", lq_file, tmp_path / "o.nii.gz", "--method", "trilinear", code=1)
    assert "could not write" in line and "No space left" in line
    monkeypatch.undo()

    from IQTEnhanceLib.methods import get_method

    spec = get_method("trilinear")

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(spec, "enhance", no_memory)
    line = refused(capsys, tmp_path, "enhance", lq_file, tmp_path / "o.nii.gz", "--method", "trilinear", code=1)
    assert "out of memory" in line


def test_runs_that_cannot_fit_in_memory_are_refused_up_front_with_the_estimate(lq_file, tmp_path, capsys,
                                                                              monkeypatch):
    lq = read_volume(lq_file)
    need = api.estimate_memory(lq.array.shape, "srep", 4)
    small = api.estimate_memory(lq.array.shape, "trilinear", 4)
    assert need > small > lq.array.size * 4 * 4   # at least the float32 output
    monkeypatch.setenv("IQT_MEMORY_LIMIT", str((need + small) // 2))
    line = refused(capsys, tmp_path, "enhance", lq_file, tmp_path / "o.nii.gz", "--method", "srep")
    assert "GiB" in line and "available" in line
    code, _, _ = run(capsys, "enhance", lq_file, tmp_path / "o.nii.gz", "--method", "trilinear", "-q")
    assert code == 0     # the method that fits still runs
    monkeypatch.setenv("IQT_MEMORY_LIMIT", "lots")
    assert "IQT_MEMORY_LIMIT" in refused(capsys, tmp_path, "enhance", lq_file, tmp_path / "p.nii.gz",
                                         "--method", "trilinear")


# -- 7. malformed model files ---------------------------------------------------------------------------
def _rewrite_model(src: Path, dst: Path, manifest_edit=None, members_edit=None) -> Path:
    with zipfile.ZipFile(src) as z:
        manifest = json.loads(z.read("manifest.json"))
        members = {n: z.read(n) for n in z.namelist() if n != "manifest.json"}
    if members_edit:
        members_edit(members)
        manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}
    if manifest_edit:
        manifest_edit(manifest)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for name, data in members.items():
            z.writestr(name, data)
    return dst


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _bomb() -> bytes:
    """An npz whose member expands ~1000× (zeros compress that well)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("P.npy", "w", force_zip64=True) as f:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (160 << 20,)})
            f.write(header.getvalue())
            block = bytes(1 << 20)
            for _ in range(640):
                f.write(block)
    return buf.getvalue()


def test_malformed_model_files_are_one_line_model_errors(lq_file, tmp_path, capsys):
    shipped = default_model_path("linear")
    pickled = io.BytesIO()
    import pickle

    pickle.dump({"W": [1, 2, 3]}, pickled)
    cases = {
        "factor-text": (lambda m: m.update(factor="four"), None, "factor"),
        "factor-float": (lambda m: m.update(factor=4.5), None, "factor"),
        "members-list": (lambda m: m.update(members=["arrays.npz"]), None, "members"),
        "no-arrays": (None, lambda ms: ms.pop("arrays.npz"), "arrays.npz"),
        "object-array": (None, lambda ms: ms.update({"arrays.npz": _npz(W=np.array([{"a": 1}], dtype=object))}),
                         "arrays.npz"),
        "pickle-as-npz": (None, lambda ms: ms.update({"arrays.npz": pickled.getvalue()}), "arrays.npz"),
        "params-list": (lambda m: m.update(params=[1, 2]), None, "params"),
        "bomb": (None, lambda ms: ms.update({"arrays.npz": _bomb()}), "expand"),
    }
    for name, (edit_manifest, edit_members, fragment) in cases.items():
        path = _rewrite_model(shipped, tmp_path / f"{name}.iqtm", edit_manifest, edit_members)
        assert path.stat().st_size < 4 << 20
        line = refused(capsys, tmp_path, "enhance", lq_file, tmp_path / "o" / "x.nii.gz", "--method", "linear",
                       "--model", path)
        assert fragment in line, (name, line)
    (tmp_path / "folder.iqtm").mkdir()
    assert "folder" in refused(capsys, tmp_path, "enhance", lq_file, tmp_path / "o.nii.gz", "--method", "linear",
                               "--model", tmp_path / "folder.iqtm")
    # and the untouched shipped model still loads
    assert load_model(shipped).factor == 4


def test_model_with_valid_manifest_round_trips(tmp_path):
    model = load_model(default_model_path("linear"))
    path = save_model(tmp_path / "copy.iqtm", model)
    again = load_model(path)
    assert again.factor == model.factor and set(again.arrays) == set(model.arrays)


# -- 11. stale temporary files of a killed run -----------------------------------------------------------
def test_stale_partials_of_a_killed_write_are_removed_by_the_next_run(lq_file, tmp_path, capsys):
    import subprocess

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()   # a PID that has ended
    out = tmp_path / "o.nii.gz"
    stale = [tmp_path / f".o.nii.gz.partial-{dead}-1.nii.gz", tmp_path / f".o.json.partial-{dead}-7"]
    for path in stale:
        path.write_bytes(b"half a file")
    folder = tmp_path / f".o.nhdr.partial-{dead}-abc"
    folder.mkdir()
    (folder / "o.raw").write_bytes(b"half")
    alive = tmp_path / f".o.nii.gz.partial-{os.getpid()}-2.nii.gz"   # a live writer's: kept
    alive.write_bytes(b"in progress")
    other = tmp_path / f".other.nii.gz.partial-{dead}-1.nii.gz"       # not an output of this run: kept
    other.write_bytes(b"not ours")
    code, _, _ = run(capsys, "enhance", lq_file, out, "--method", "trilinear", "-q")
    assert code == 0
    code, _, _ = run(capsys, "enhance", lq_file, tmp_path / "o.nhdr", "--method", "trilinear", "-q")
    assert code == 0
    assert not any(p.exists() for p in stale) and not folder.exists()
    assert alive.exists() and other.exists()


# -- 12. small ones --------------------------------------------------------------------------------------
def test_device_cuda_with_an_interpolation_method_warns(lq_file, tmp_path, capsys):
    code, _, err = run(capsys, "enhance", lq_file, tmp_path / "o.nii.gz", "--method", "trilinear",
                       "--device", "cuda", "-q")
    assert code == 0
    assert "runs on the CPU" in err and "ignored" in err
    sidecar = json.loads((tmp_path / "o.json").read_text())
    assert any("CPU" in w for w in sidecar["warnings"]) and sidecar["device"] == "cpu"


def test_evaluate_names_a_direction_mismatch(lq_file, tmp_path, capsys):
    hq = read_volume(lq_file.parent / "hq.nii.gz")
    flipped = Volume(hq.array, hq.spacing, hq.origin, hq.direction @ np.diag([1.0, -1.0, 1.0]))
    write_volume(flipped, tmp_path / "flipped.nii.gz")
    line = refused(capsys, tmp_path, "evaluate", tmp_path / "flipped.nii.gz", lq_file.parent / "hq.nii.gz")
    assert "direction" in line and "spacing" not in line


# -- property: random corruption never gives a silent wrong answer ---------------------------------------
def _corrupt(data: bytes, kind: str, rng, header_bytes: int) -> bytes:
    data = bytearray(data)
    if kind == "truncate":
        return bytes(data[: int(rng.integers(1, len(data)))])
    lo, hi = (0, header_bytes) if kind == "header" else (header_bytes, len(data))
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(lo, hi))] = int(rng.integers(0, 256))
    return bytes(data)


def test_randomly_corrupted_inputs_give_an_error_or_a_correct_grid_with_every_method(colin, tmp_path, capsys):
    hq, mask = colin
    small = Volume(hq.array[:, 14:54, 12:52], hq.spacing, hq.physical_point([12, 14, 0]), hq.direction)
    lq, _ = simulate(small, SimulationParameters(factor=4, axis="k", snr=20.0, seed=5))
    lq = lq.with_array(lq.array.astype(np.float32))
    rng = np.random.default_rng(2026)
    formats = {".nii": 352, ".nii.gz": 0, ".nrrd": 0, ".mha": 0}
    originals = {}
    for suffix in formats:
        path = write_volume(lq, tmp_path / f"orig{suffix}")
        originals[suffix] = path.read_bytes()
        if suffix in (".nrrd", ".mha"):
            formats[suffix] = originals[suffix].index(b"\n\n") + 2 if suffix == ".nrrd" else \
                originals[suffix].index(b"ElementDataFile = LOCAL\n") + 24
    methods = list(METHOD_MODULES)
    outcomes = {"error": 0, "output": 0}
    for n in range(20):
        suffix = list(formats)[n % len(formats)]
        kind = ("truncate", "header", "data")[n % 3]
        if suffix == ".nii.gz":
            raw = gzip.decompress(originals[suffix])
            data = gzip.compress(_corrupt(raw, kind, rng, 352)) if kind != "truncate" else \
                _corrupt(originals[suffix], kind, rng, 0)
        else:
            data = _corrupt(originals[suffix], kind, rng, formats[suffix])
        bad = tmp_path / f"bad{n}{suffix}"
        bad.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        for method in methods:
            out = tmp_path / "out" / f"{n}_{method}.nii.gz"
            code, _, err = run(capsys, "enhance", bad, out, "--method", method, "--device", "cpu", "--axis", "k",
                               "--factor", "4", "-q")
            assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest
            if code != 0:
                error_line(err)
                assert code == 2, err
                assert not out.exists()
                outcomes["error"] += 1
                continue
            outcomes["output"] += 1
            read_in = read_volume(bad)
            got = read_volume(out)
            expected = hq_geometry(read_in, 4, "k")
            assert got.array.shape == tuple(expected["shape"]), (n, method)
            assert np.allclose(got.spacing, expected["spacing"]) and np.allclose(got.origin, expected["origin"])
            assert np.isfinite(got.array).all()
    assert outcomes["error"] and outcomes["output"], outcomes
