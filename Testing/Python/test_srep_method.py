"""IQT-SRep end to end: the shipped model on the held-out Colin27 crop, the trust map, cancel,
model-file validation and deterministic training."""
import zipfile

import numpy as np
import pytest

from IQTEnhanceLib import api, metrics, sparse
from IQTEnhanceLib.errors import CancelledError, ModelError
from IQTEnhanceLib.models import default_model_path, load_model, save_model
from IQTEnhanceLib.simulate import SimulationParameters, simulate
from IQTEnhanceLib.volume import Volume


@pytest.fixture(scope="module")
def colin_lq(colin):
    hq, mask = colin
    lq, _ = simulate(hq, factor=4, axis="k", snr=20.0, seed=1)
    return lq


@pytest.fixture(scope="module")
def shipped():
    return load_model(default_model_path("srep"))


def test_shipped_model_is_small_and_documented(shipped):
    path = default_model_path("srep")
    assert path.stat().st_size < 5 * 1024 * 1024
    assert shipped.method == "srep" and shipped.factor == 4
    assert shipped.params["lq_aspect"] == 4.0
    assert "icbm" in shipped.training["data"].lower()
    assert path.with_suffix(".md").exists()


def test_shipped_model_beats_trilinear_on_held_out_colin(colin, colin_lq):
    hq, mask = colin
    tri = metrics.evaluate(api.enhance(colin_lq, "trilinear").volume, hq, mask)
    result = api.enhance(colin_lq, "srep")
    got = metrics.evaluate(result.volume, hq, mask)
    assert result.volume.array.shape[0] == colin_lq.array.shape[0] * 4
    assert got["nrmse"] < 0.9 * tri["nrmse"], (got, tri)
    assert got["ssim"] > tri["ssim"] + 0.01, (got, tri)


def test_trust_map_is_high_on_a_foreign_structure(colin_lq):
    lq = colin_lq.array.copy()
    k0, j0, i0 = lq.shape[0] // 2 - 1, lq.shape[1] // 2 - 6, lq.shape[2] // 2 - 6
    cube = (slice(k0, k0 + 3), slice(j0, j0 + 12), slice(i0, i0 + 12))
    kk, jj, ii = np.indices((3, 12, 12))
    bright = float(np.percentile(lq, 99))
    lq[cube] = np.where((kk + jj + ii) % 2 == 0, 2.0 * bright, 0.1 * bright)  # a sharp checkerboard
    foreign = Volume(lq, colin_lq.spacing, colin_lq.origin, colin_lq.direction)
    result = api.enhance(foreign, "srep", trust_map=True)
    trust = result.extras["trust"].array
    assert trust.shape == result.volume.array.shape
    inside = trust[k0 * 4 + 4:(k0 + 2) * 4, j0 + 3:j0 + 9, i0 + 3:i0 + 9]
    brain = trust[:, 6:-6, 6:-6]
    reference = np.median(brain[brain > 0])
    assert np.median(inside) > 2.5 * reference, (np.median(inside), reference)
    # without the option, no map
    assert "trust" not in api.enhance(colin_lq, "srep", stride_inplane=3).extras


def test_cancel_stops_within_one_batch(colin_lq, monkeypatch):
    calls = {"n": 0}
    original = sparse.lasso

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(sparse, "lasso", counting)
    with pytest.raises(CancelledError):
        api.enhance(colin_lq, "srep", batch_size=256, cancel=lambda: calls["n"] >= 1)
    assert calls["n"] == 1


def test_corrupt_or_mismatched_model_files_fail_clearly(tmp_path, colin_lq, shipped):
    garbage = tmp_path / "garbage.iqtm"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ModelError, match="corrupt or not an IQTEnhance model"):
        api.enhance(colin_lq, "srep", model=garbage)

    # one byte of the dictionaries flipped: the member checksum catches it
    path = default_model_path("srep")
    damaged = tmp_path / "damaged.iqtm"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            data = bytearray(src.read(item.filename))
            if item.filename == "arrays.npz":
                data[len(data) // 2] ^= 0xFF
            dst.writestr(item, bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        api.enhance(colin_lq, "srep", model=damaged)

    with pytest.raises(ModelError, match="×4"):     # the ×4 model asked for ×2 (no model given: the ×2 one)
        api.enhance(colin_lq, "srep", model=path, factor=2)
    assert api.plan(colin_lq, "srep", factor=2).model.factor == 2

    wrong = load_model(path)
    wrong.arrays["P"] = wrong.arrays["P"][:-3]
    save_model(tmp_path / "wrong.iqtm", wrong)
    with pytest.raises(ModelError, match="do not match"):
        api.enhance(colin_lq, "srep", model=tmp_path / "wrong.iqtm")

    other = load_model(path)
    other.method = "linear"
    save_model(tmp_path / "other.iqtm", other)
    with pytest.raises(ModelError, match="not a srep model"):
        api.enhance(colin_lq, "srep", model=tmp_path / "other.iqtm")


@pytest.mark.parametrize("formulation", ["ridge-residual", "joint"])
def test_training_is_deterministic_with_a_seed(icbm_t1, colin_lq, formulation):
    hq, mask = icbm_t1
    opts = dict(formulation=formulation, samples=3000, atoms=32, iterations=15, dl_batch=64, lam=0.05)
    sim = SimulationParameters(snr=20.0)
    a = api.train("srep", [hq], masks=[mask], factor=4, seed=3, simulation=sim, **opts)
    b = api.train("srep", [hq], masks=[mask], factor=4, seed=3, simulation=sim, **opts)
    for name in a.arrays:
        assert np.array_equal(a.arrays[name], b.arrays[name]), name
    assert a.params["formulation"] == formulation and a.training["pairs"] == 3000
    out = api.enhance(colin_lq, "srep", model=a, stride_inplane=3).volume.array
    assert out.shape[0] == colin_lq.array.shape[0] * 4 and np.isfinite(out).all()


def test_command_line_writes_output_and_trust_map(tmp_path, colin_lq):
    from IQTEnhanceApps.cli import main
    from IQTEnhanceLib.volume import read_volume, write_volume

    lq_path = write_volume(colin_lq, tmp_path / "lq.nrrd")
    out, trust = tmp_path / "hq.nrrd", tmp_path / "trust.nrrd"
    assert main(["enhance", str(lq_path), str(out), "--method", "srep", "--trust-map", str(trust),
                 "--stride-inplane", "3", "--quiet"]) == 0
    hq = read_volume(out)
    t = read_volume(trust, check_finite=True)
    assert hq.array.shape == t.array.shape == (colin_lq.array.shape[0] * 4,) + colin_lq.array.shape[1:]
    assert np.isfinite(t.array).all() and t.array.max() > 0
