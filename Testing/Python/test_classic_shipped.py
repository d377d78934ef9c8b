"""The shipped classic models (trained on the ICBM 2009c T1 template) beat trilinear on the held-out
Colin27 fixture; they are listed in the shipped manifest with a model card; the CLI trains them."""
import json

import numpy as np
import pytest

from IQTEnhanceLib import api
from IQTEnhanceApps.cli import main
from IQTEnhanceLib.metrics import evaluate
from IQTEnhanceLib.grid import crop_to_whole_slabs
from IQTEnhanceLib.models import default_model_path, file_checksum, load_model, shipped_models, shipped_models_dir
from IQTEnhanceLib.simulate import simulate
from IQTEnhanceLib.volume import write_volume


@pytest.fixture(scope="module")
def colin_case(colin):
    image, mask = colin
    lq, _ = simulate(image, factor=4, axis="k", snr=20, seed=1, mask=mask)
    return lq, crop_to_whole_slabs(image, 4, "k"), crop_to_whole_slabs(mask, 4, "k")


@pytest.mark.parametrize("method", ["linear", "forest"])
def test_shipped_model_beats_trilinear_on_held_out_colin27(method, colin_case):
    lq, truth, mask = colin_case
    trilinear = evaluate(api.enhance(lq, "trilinear").volume, truth, mask)
    result = api.enhance(lq, method)  # the shipped default model
    learned = evaluate(result.volume, truth, mask)
    assert result.info["model"] == load_model(default_model_path(method)).name
    assert learned["nrmse"] < 0.9 * trilinear["nrmse"], (learned, trilinear)
    assert learned["ssim"] > trilinear["ssim"] + 0.02, (learned, trilinear)
    # a learned residual, not a copy of the interpolation: outside the mask it changes little
    assert not np.allclose(result.volume.array, api.enhance(lq, "trilinear").volume.array)


@pytest.mark.parametrize("method", ["linear", "forest"])
def test_shipped_model_files_are_listed_with_card_and_checksum(method):
    entries = shipped_models(method)
    assert entries, f"no shipped {method} model"
    entry = next(e for e in entries if e.get("default"))
    path = shipped_models_dir() / entry["file"]
    assert file_checksum(path) == entry["sha256"]
    assert path.stat().st_size < 20e6
    model = load_model(path)
    assert model.method == method and model.factor == 4 and model.params["lq_aspect"] == 4.0
    assert "icbm2009c_t1" in model.training["data"] and model.training["simulation"]["mode"] == "stochastic"
    assert not model.blobs  # plain arrays only: loading runs no pickled code
    card = shipped_models_dir() / entry["model_card"]
    text = card.read_text()
    assert "Colin27" in text and "trilinear" in text and entry["file"] in text


def test_cli_trains_a_linear_model_that_enhances(colin, tmp_path, capsys):
    image, mask = colin
    write_volume(image, tmp_path / "hq.nii.gz")
    write_volume(mask, tmp_path / "mask.nii.gz", dtype=np.uint8)
    model_path = tmp_path / "lin.iqtm"
    code = main(["train", "--method", "linear", "--hq", str(tmp_path / "hq.nii.gz"), "--mask",
                 str(tmp_path / "mask.nii.gz"), "--out", str(model_path), "--samples", "3000",
                 "--realizations", "1", "--seed", "3", "-q"])
    assert code == 0, capsys.readouterr().err
    model = load_model(model_path)
    assert model.method == "linear" and model.training["seed"] == 3 and model.training["pairs"] == 3000
    assert model.training["options"]["realizations"] == 1
    assert main(["simulate", str(tmp_path / "hq.nii.gz"), str(tmp_path / "lq.nii.gz"), "-q"]) == 0
    assert main(["enhance", str(tmp_path / "lq.nii.gz"), str(tmp_path / "out.nii.gz"), "--method", "linear",
                 "--model", str(model_path), "--stride-inplane", "2", "-q"]) == 0
    assert (tmp_path / "out.nii.gz").exists()
    json.dumps(model.params)  # every parameter is plain JSON
