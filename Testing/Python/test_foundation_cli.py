"""The iqt-enhance command line: round trip, method options, every bad input, Ctrl-C, demo."""
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from IQTEnhanceApps import cli
from IQTEnhanceApps.cli import main
from IQTEnhanceLib.methods import METHOD_MODULES
from IQTEnhanceLib.metrics import evaluate
from IQTEnhanceLib.models import ModelFile, save_model
from IQTEnhanceLib.volume import Volume, read_volume, write_volume

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("iqt-enhance: error: "), err
    return lines[0]


@pytest.fixture
def files(colin, tmp_path):
    hq = tmp_path / "hq.nii.gz"
    write_volume(colin[0], hq)
    mask = tmp_path / "mask.nii.gz"
    write_volume(colin[1], mask, dtype=np.uint8)
    return {"hq": hq, "mask": mask, "dir": tmp_path}


FAKE_METHODS = '''
import numpy as np
from IQTEnhanceLib.interpolation import upsample_array
from IQTEnhanceLib.methods import MethodOption, MethodSpec


def enhance(lq, factor, model, device, reporter, gain=1.0, mode="linear", flip=False, trust_map=False):
    out = upsample_array(lq, factor, 0, "trilinear") * np.float32(gain)
    return out, ({"trust": np.full(out.shape, 0.5 if flip else 1.0, np.float32)} if trust_map else {})


OPTIONS = (MethodOption("gain", float, 1.0, "output gain"),
           MethodOption("mode", str, "linear", "a choice", ("linear", "other")),
           MethodOption("flip", bool, False, "a switch"),
           MethodOption("trust_map", bool, False, "compute the trust map", extra="trust"))
def train(pairs, factor, options, reporter, provenance):
    from IQTEnhanceLib.models import ModelFile

    realizations = pairs.fixed(1)
    reporter(1.0, "trained", force=True)
    return ModelFile("fakemodel", "fake-trained", factor, {"scale": options["scale"]},
                     {"n": np.array([len(realizations)])}, training=provenance)


SPECS = {
    "fakeopt": MethodSpec(name="fakeopt", label="Fake", description="test method with options",
                          enhance=enhance, options=OPTIONS, extras=("trust",)),
    "fakemodel": MethodSpec(name="fakemodel", label="Fake model", description="test method with a model",
                            enhance=enhance, needs_model=True, train=train,
                            train_options=(MethodOption("scale", float, 1.0, "a training option"),)),
}
'''


@pytest.fixture
def fake_methods(tmp_path, monkeypatch):
    (tmp_path / "fake_iqt_methods.py").write_text(FAKE_METHODS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(METHOD_MODULES, "fakeopt", "fake_iqt_methods")
    monkeypatch.setitem(METHOD_MODULES, "fakemodel", "fake_iqt_methods")


def test_round_trip_simulate_enhance_evaluate(files, capsys):
    d = files["dir"]
    assert run(capsys, "simulate", files["hq"], d / "lq.nii.gz", "--factor", 4, "--axis", "k", "--snr", 20,
               "--seed", 0, "-q")[0] == 0
    assert (d / "lq.json").exists()
    assert run(capsys, "enhance", d / "lq.nii.gz", d / "out.nii.gz", "--method", "trilinear", "-q")[0] == 0
    sidecar = json.loads((d / "out.json").read_text())
    assert sidecar["method"] == "trilinear" and sidecar["factor"] == 4 and sidecar["axis"] == "k"
    assert sidecar["output_geometry"]["size_ijk"] == list(read_volume(files["hq"]).size_ijk)
    code, out, _ = run(capsys, "evaluate", d / "out.nii.gz", files["hq"], "--mask", files["mask"],
                       "--json", d / "m.json", "--csv", d / "m.csv")
    assert code == 0
    metrics = json.loads((d / "m.json").read_text())
    expected = evaluate(read_volume(d / "out.nii.gz"), read_volume(files["hq"]),
                        read_volume(files["mask"], allow_label_map=True))
    for key in ("nrmse", "psnr", "ssim"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-9)
    assert 0.03 < metrics["nrmse"] < 0.2 and 0.5 < metrics["ssim"] < 1
    assert f"{metrics['nrmse']:.4f}" in out  # the printed table
    rows = list(csv.DictReader((d / "m.csv").open()))
    assert float(rows[0]["ssim"]) == pytest.approx(metrics["ssim"])
    # several outputs: one row each
    assert run(capsys, "enhance", d / "lq.nii.gz", d / "near.nrrd", "--method", "nearest", "-q")[0] == 0
    code, out, _ = run(capsys, "evaluate", d / "out.nii.gz", d / "near.nrrd", files["hq"], "--json", d / "two.json")
    results = json.loads((d / "two.json").read_text())["results"]
    assert code == 0 and [r["name"] for r in results] == ["out", "near"]
    assert results[0]["nrmse"] < results[1]["nrmse"]  # trilinear beats nearest


def test_method_options_as_flags_and_O(files, fake_methods, capsys):
    d = files["dir"]
    assert run(capsys, "simulate", files["hq"], d / "lq.nii.gz", "-q")[0] == 0
    code, out, _ = run(capsys, "enhance", "--help")
    assert code == 0
    for name in METHOD_MODULES:
        assert name in out  # the registry's methods, listed with their options
    assert "--gain GAIN" in out and "output gain" in out
    code, out, _ = run(capsys, "enhance", "x", "y", "--method", "fakeopt", "--help")
    assert code == 0 and "options of fakeopt" in out and "--gain" in out and "--no-flip" in out
    assert "-O trust_map=VALUE" in out  # its flag name is taken by --trust-map FILE
    code, _, _ = run(capsys, "enhance", d / "lq.nii.gz", d / "g.nii.gz", "--method", "fakeopt", "--gain", "2",
                     "-O", "mode=other", "--flip", "--trust-map", d / "trust.nii.gz", "-q")
    assert code == 0
    # --trust-map FILE switches on the method's trust_map option
    assert json.loads((d / "g.json").read_text())["options"] == {"gain": 2.0, "mode": "other", "flip": True,
                                                                 "trust_map": True}
    assert float(read_volume(d / "trust.nii.gz").array.max()) == 0.5
    base = run(capsys, "enhance", d / "lq.nii.gz", d / "b.nii.gz", "--method", "fakeopt", "-q")
    assert base[0] == 0
    np.testing.assert_allclose(read_volume(d / "g.nii.gz").array, 2 * read_volume(d / "b.nii.gz").array, rtol=1e-5)
    # bad option values and names: one clear line each
    for extra in (["-O", "gain=lots"], ["-O", "colour=red"], ["-O", "flip=maybe"], ["-O", "mode"]):
        code, _, err = run(capsys, "enhance", d / "lq.nii.gz", d / "bad.nii.gz", "--method", "fakeopt", *extra, "-q")
        assert code == 2, extra
        one_error_line(err)
        assert not (d / "bad.nii.gz").exists()
    code, _, err = run(capsys, "enhance", d / "lq.nii.gz", d / "bad.nii.gz", "--method", "trilinear",
                       "--trust-map", d / "t.nii.gz", "-q")
    assert code == 2 and "trust map" in one_error_line(err)


def test_missing_method_module_is_a_clear_error(files, monkeypatch, capsys):
    monkeypatch.setitem(METHOD_MODULES, "srep", ".module_that_does_not_exist")
    d = files["dir"]
    assert run(capsys, "simulate", files["hq"], d / "lq.nii.gz", "-q")[0] == 0
    code, _, err = run(capsys, "enhance", d / "lq.nii.gz", d / "o.nii.gz", "--method", "srep", "-q")
    assert code == 2 and "not available" in one_error_line(err)
    code, _, err = run(capsys, "enhance", d / "lq.nii.gz", d / "o.nii.gz", "--method", "magic", "-q")
    assert code == 2 and "invalid choice" in err  # argparse's usage error
    assert not (d / "o.nii.gz").exists()


def bad_inputs(d, colin):
    """Every kind of input the CLI must refuse, written to disk: name -> (path, message fragment)."""
    arr = colin[0].array
    cases = {"missing file": (d / "nothing_here.nii.gz", "no such file")}
    flat = sitk.GetImageFromArray(arr[20])
    sitk.WriteImage(flat, str(d / "flat.nii.gz"))
    cases["2-D image"] = (d / "flat.nii.gz", "3-D")
    write_volume(Volume(arr[20:21], (1, 1, 1)), d / "slice.nii.gz")
    cases["single slice"] = (d / "slice.nii.gz", "single slice")
    series = sitk.JoinSeries([sitk.GetImageFromArray(arr)] * 3)
    sitk.WriteImage(series, str(d / "series.nii.gz"))
    cases["4-D image"] = (d / "series.nii.gz", "3-D")
    vector = sitk.GetImageFromArray(np.stack([arr] * 3, axis=-1), isVector=True)
    sitk.WriteImage(vector, str(d / "rgb.nrrd"))
    cases["vector image"] = (d / "rgb.nrrd", "components")
    labels = np.zeros(arr.shape, np.uint8)
    labels[10:30, 10:40, 10:40] = 1
    labels[20:40, 30:60, 20:50] = 3
    labels[5:15, 50:70, 40:60] = 7
    write_volume(colin[0].with_array(labels), d / "labels.nii.gz", dtype=np.uint8)
    cases["label map"] = (d / "labels.nii.gz", "label map")
    nan = arr.copy()
    nan[10, 10, 10:20] = np.nan
    nan[11, 11, 11] = np.inf
    write_volume(colin[0].with_array(nan), d / "nan.nrrd")
    cases["NaN voxels"] = (d / "nan.nrrd", "NaN")
    (d / "garbage.nii.gz").write_bytes(b"this is not an image" * 10)
    cases["unreadable file"] = (d / "garbage.nii.gz", "not a readable image")
    return cases


def test_every_bad_input_gives_one_clear_error_and_leaves_the_file_untouched(files, colin, capsys):
    d = files["dir"]
    for name, (path, fragment) in bad_inputs(d, colin).items():
        before = sha(path) if path.exists() else None
        commands = [
            ["simulate", path, d / "out_lq.nii.gz", "-q"],
            ["enhance", path, d / "out_hq.nii.gz", "--method", "trilinear", "-q"],
            ["evaluate", path, files["hq"], "--json", d / "out_m.json", "-q"],
            ["evaluate", files["hq"], path, "-q"],
        ]
        for command in commands:
            code, _, err = run(capsys, *command)
            assert code == 2, (name, command)
            line = one_error_line(err)
            assert fragment in line, (name, line)
            assert str(path) in line or path.name in line, (name, line)
        assert (sha(path) if path.exists() else None) == before, name
        for output in ("out_lq.nii.gz", "out_lq.json", "out_hq.nii.gz", "out_hq.json", "out_m.json"):
            assert not (d / output).exists(), (name, output)
        assert not list(d.glob(".*partial*"))


def test_factor_grid_and_model_errors(files, colin, fake_methods, capsys):
    d = files["dir"]
    hq = files["hq"]
    assert run(capsys, "simulate", hq, d / "lq.nii.gz", "-q")[0] == 0
    lq = d / "lq.nii.gz"
    thin = d / "thin.nii.gz"
    write_volume(Volume(colin[0].array[:3], colin[0].spacing, colin[0].origin, colin[0].direction), thin)  # 3 k slices
    one = d / "one.nii.gz"
    lq_volume = read_volume(lq)
    write_volume(Volume(lq_volume.array[:1], lq_volume.spacing, lq_volume.origin, lq_volume.direction), one)
    coarse = d / "coarse.nii.gz"
    write_volume(Volume(colin[0].array, (1.0, 1.0, 2.0), colin[0].origin, colin[0].direction), coarse)
    shifted = d / "shifted.nii.gz"
    write_volume(Volume(colin[0].array, colin[0].spacing, colin[0].physical_point([0.5, 0, 0]),
                        colin[0].direction), shifted)
    small_mask = d / "small_mask.nii.gz"
    write_volume(Volume(np.ones((10, 10, 10), np.uint8), (1, 1, 1)), small_mask, dtype=np.uint8)
    not_a_model = d / "model.iqtm"
    not_a_model.write_bytes(b"PK\x03\x04 broken zip")
    other = save_model(d / "other.iqtm", ModelFile("linear", "other", 4, {}, {"w": np.zeros(3)}))
    mine = save_model(d / "mine.iqtm", ModelFile("fakemodel", "mine", 4, {}, {"w": np.zeros(3)}))
    cases = [
        (["simulate", hq, d / "o.nii.gz", "--factor", 1], "factor"),
        (["simulate", hq, d / "o.nii.gz", "--factor", 17], "factor"),
        (["simulate", thin, d / "o.nii.gz", "--factor", 4, "--axis", "k"], "fewer than the factor"),
        (["simulate", hq, d / "o.nii.gz", "--mask", small_mask], "not on the image's grid"),
        (["simulate", hq, d / "o.nii.gz", "--stochastic", "--snr", 20], "--stochastic"),
        (["simulate", hq, d / "o.txt"], "unsupported output"),
        (["simulate", hq, hq], "refusing to overwrite"),
        (["enhance", lq, d / "o.nii.gz", "--method", "trilinear", "--factor", 1], "factor"),
        (["enhance", one, d / "o.nii.gz", "--method", "trilinear", "--axis", "k"], "single slice"),
        (["enhance", lq, lq, "--method", "trilinear"], "refusing to overwrite"),
        (["enhance", lq, d / "o.nii.gz", "--method", "trilinear", "--model", mine], "takes no model"),
        (["enhance", lq, d / "o.nii.gz", "--method", "fakemodel", "--model", not_a_model], "not an IQTEnhance model"),
        (["enhance", lq, d / "o.nii.gz", "--method", "fakemodel", "--model", hq], "not an IQTEnhance model"),
        (["enhance", lq, d / "o.nii.gz", "--method", "fakemodel", "--model", other], "not a fakemodel model"),
        (["enhance", lq, d / "o.nii.gz", "--method", "fakemodel", "--model", mine, "--factor", 3], "x4"),
        (["enhance", lq, d / "o.nii.gz", "--method", "fakemodel", "--model", d / "absent.iqtm"], "no such model"),
        (["evaluate", coarse, hq], "does not match"),
        (["evaluate", shifted, hq], "fraction of a voxel"),
        (["evaluate", lq, hq], "does not match"),  # the LQ itself is on another grid
        (["evaluate", hq, hq, "--mask", small_mask], "not on the image's grid"),
        (["fetch-data", "no_such_data"], "unknown data set"),
    ]
    watched = [hq, lq, thin, one, coarse, shifted, small_mask, not_a_model, other, mine]
    before = {p: sha(p) for p in watched}
    for command, fragment in cases:
        code, _, err = run(capsys, *command, "-q")
        assert code == 2, command
        line = one_error_line(err).replace("×", "x")
        assert fragment in line, (command, line)
        assert not (d / "o.nii.gz").exists() and not (d / "o.json").exists()
    assert {p: sha(p) for p in watched} == before
    # the right model runs
    assert run(capsys, "enhance", lq, d / "ok.nii.gz", "--method", "fakemodel", "--model", mine, "-q")[0] == 0
    assert json.loads((d / "ok.json").read_text())["model"] == "mine"


def test_nifti_nan_reaches_the_engine_as_zero_as_documented(colin, tmp_path):
    """SimpleITK reads NaN voxels of a NIfTI file as 0 (measured with SimpleITK 2.5.7): the CLI's help says so. If this
    ever changes, NaNs in NIfTI become detected errors and the help text should be updated."""
    arr = colin[0].array.copy()
    arr[5, 5, 5] = np.nan
    write_volume(colin[0].with_array(arr), tmp_path / "nan.nii.gz")
    assert read_volume(tmp_path / "nan.nii.gz").array[5, 5, 5] == 0
    assert "NaN" in cli.build_parser(["--help"]).epilog


def test_commands_are_registered_explicitly(monkeypatch, capsys):
    """Every command is a register function in one tuple (no module names looked up at run time):
    the applications beside the core commands register their own sub-parser, and a new command is
    one more entry."""
    from IQTEnhanceApps.batch import command as batch_command
    from IQTEnhanceApps.cli import parser as cli_parser
    from IQTEnhanceApps.study import command as study_command

    assert batch_command.register in cli_parser.COMMANDS and study_command.register in cli_parser.COMMANDS

    def register_hello(subparsers, request):
        p = subparsers.add_parser("hello", parents=[request.common], help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.name}") or 3)

    monkeypatch.setattr(cli_parser, "COMMANDS", cli_parser.COMMANDS + (register_hello,))
    code, out, err = run(capsys, "hello", "--name", "IQT")
    assert code == 3 and out.strip() == "hello IQT" and err == ""
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "hello" in out and "simulate" in out and "batch" in out and "benchmark" in out


def test_ctrl_c_exits_130_without_output(tmp_path):
    big = Volume(np.random.default_rng(0).random((64, 256, 256), dtype=np.float32) * 100 + 10, (1, 1, 4))
    write_volume(big, tmp_path / "big.nii")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "IQTEnhance"))
    proc = subprocess.Popen([sys.executable, "-m", "IQTEnhanceApps.cli", "enhance", str(tmp_path / "big.nii"),
                             str(tmp_path / "out.nii.gz"), "--method", "bspline"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:  # wait until the enhancement has started (the 0% progress line)
        lines.append(line)
        if "0%" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.nii"]


def test_demo_runs_every_available_method(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    from IQTEnhanceApps.demo import demo_methods

    methods, skipped = demo_methods()
    code, out, err = run(capsys, "demo", "--data", "fixture", "--out", out_dir, "-q")
    assert code == 0, err
    metrics = json.loads((out_dir / "metrics.json").read_text())
    ran = [m for m in methods if not metrics["skipped"].get(m, "").startswith("failed")]
    assert {"nearest", "trilinear", "bspline"} <= set(ran)
    rows = list(csv.DictReader((out_dir / "metrics.csv").open()))
    assert [r["name"] for r in rows] == ran
    for row in rows:
        assert 0 < float(row["nrmse"]) < 0.3 and 0 < float(row["ssim"]) <= 1
        assert read_volume(out_dir / row["output"]).shape == (48, 72, 64)
        assert row["name"] in out
    for name in skipped:
        assert f"skipping {name}" in out
    png = (out_dir / "slices.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert (out_dir / "lq.nii.gz").exists() and (out_dir / "hq.nii.gz").exists()
    by_name = {r["name"]: float(r["nrmse"]) for r in rows}
    assert by_name["trilinear"] < by_name["nearest"]


def test_train_and_models_commands(files, fake_methods, capsys):
    from IQTEnhanceLib.models import load_model

    d = files["dir"]
    code, out, err = run(capsys, "train", "--method", "fakemodel", "--hq", files["hq"], "--mask", files["mask"],
                         "--out", d / "m.iqtm", "--scale", 2, "--factor", 4, "--seed", 1, "-q")
    assert code == 0, err
    model = load_model(d / "m.iqtm")
    assert model.params == {"scale": 2.0} and int(model.arrays["n"][0]) == 3  # one realization per axis
    assert model.training["data"] == str(files["hq"]) and model.training["seed"] == 1
    assert model.training["simulation"]["mode"] == "stochastic"
    assert run(capsys, "simulate", files["hq"], d / "lq.nii.gz", "-q")[0] == 0
    assert run(capsys, "enhance", d / "lq.nii.gz", d / "o.nii.gz", "--method", "fakemodel", "--model",
               d / "m.iqtm", "-q")[0] == 0
    code, _, err = run(capsys, "train", "--method", "trilinear", "--out", d / "t.iqtm", "-q")
    assert code == 2 and "not trained" in one_error_line(err)
    code, _, err = run(capsys, "train", "--method", "fakemodel", "--hq", files["hq"], "--mask", files["mask"],
                       files["mask"], "--out", d / "t.iqtm", "-q")
    assert code == 2 and "one file per --hq" in one_error_line(err)
    assert not (d / "t.iqtm").exists()
    code, out, _ = run(capsys, "models")
    assert code == 0 and "shipped models" in out
    for name in METHOD_MODULES:
        assert name in out


def test_demo_without_matplotlib_still_writes_volumes_and_metrics(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out_dir = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "--data", "fixture", "--out", out_dir, "--methods", "nearest",
                         "trilinear", "-q")
    assert code == 0, err
    assert "pip install matplotlib" in out
    assert not (out_dir / "slices.png").exists()
    assert (out_dir / "metrics.csv").exists() and (out_dir / "trilinear.nii.gz").exists()
