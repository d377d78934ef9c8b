"""Classic IQT baseline ``linear``: the ridge fit recovers a known linear patch map, training is
deterministic, models refuse inputs they were not trained for."""
import dataclasses

import numpy as np
import pytest

from IQTEnhanceLib import api
from IQTEnhanceLib.errors import InputError, ModelError
from IQTEnhanceLib.methods import classic
from IQTEnhanceLib.models import load_model, save_model
from IQTEnhanceLib.simulate import simulate
from IQTEnhanceLib.volume import Volume


def test_fit_ridge_recovers_a_known_linear_patch_map():
    """Y = X W + b + noise: the fitted map is W, and the held-out error is the noise level."""
    rng = np.random.default_rng(3)
    d_in, d_out, n, sigma = 40, 24, 30_000, 0.05
    mixing = rng.normal(size=(d_in, d_in)) / np.sqrt(d_in)  # correlated features, like patches
    W_true = rng.normal(size=(d_in, d_out)) * 0.3
    b_true = rng.normal(size=d_out) * 0.1

    def draw(m):
        X = rng.normal(size=(m, d_in)) @ mixing
        return X, X @ W_true + b_true + rng.normal(scale=sigma, size=(m, d_out))

    X, Y = draw(n)
    Xv, Yv = draw(5000)
    fit = classic.fit_ridge(X, Y, [1e-8, 1e-6, 1e-4, 1e-2, 1.0], Xv, Yv)
    assert fit["lambda"] <= 1e-4                  # a strong penalty would bias the map: not chosen
    assert fit["val_rmse"][-1] > 2 * sigma        # ... and the grid shows why
    assert np.linalg.norm(fit["W"] - W_true) / np.linalg.norm(W_true) < 0.01
    assert np.abs(fit["b"] - b_true).max() < 0.005
    Xt, Yt = draw(5000)
    rmse = np.sqrt(np.mean((Xt @ fit["W"] + fit["b"] - Yt) ** 2))
    assert rmse == pytest.approx(sigma, rel=0.02)  # only the noise is left
    assert fit["val_rmse_zero"] > 10 * sigma


def test_realization_offsets_are_removed_and_flat_patches_get_no_residual():
    """A simulated realization's global intensity offset is not learnable from mean-removed
    features: it is taken out of the targets, and the map has no intercept."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 10))
    W_true = rng.normal(size=(10, 6))
    groups = np.repeat([0, 1, 2], 1000)
    offsets = np.array([0.3, -0.1, 0.05])[groups][:, None]
    Y = X @ W_true + offsets + rng.normal(scale=0.01, size=(3000, 6))
    centred = classic.remove_realization_offsets(Y, groups)
    for g in range(3):
        assert abs(centred[groups == g].mean()) < 1e-5
    fit = classic.fit_ridge(X, centred, [1e-6], intercept=False)
    assert np.all(fit["b"] == 0)
    assert np.linalg.norm(fit["W"] - W_true) / np.linalg.norm(W_true) < 0.01


def test_fit_ridge_rejects_bad_shapes():
    with pytest.raises(InputError):
        classic.fit_ridge(np.zeros((10, 3)), np.zeros((9, 2)), [1e-3])
    with pytest.raises(InputError, match="positive"):
        classic.parse_lambdas("1e-3,-1")
    with pytest.raises(InputError, match="comma-separated"):
        classic.parse_lambdas("small")


def _small_train(icbm_t1, seed=0, **extra):
    image, mask = icbm_t1
    options = dict(samples=4000, realizations=1, lambdas="1e-6,1e-4,1e-2")
    options.update(extra)
    return api.train("linear", [image], masks=[mask], factor=4, seed=seed, data_names=["fixture"], **options)


def test_training_is_deterministic_and_records_the_choice(icbm_t1, tmp_path):
    a = _small_train(icbm_t1, seed=0)
    b = _small_train(icbm_t1, seed=0)
    c = _small_train(icbm_t1, seed=1)
    assert np.array_equal(a.arrays["W"], b.arrays["W"]) and np.array_equal(a.arrays["b"], b.arrays["b"])
    assert not np.allclose(a.arrays["W"], c.arrays["W"])
    p = a.params
    assert p["lq_patch"] == [2, 5, 5] and p["hq_patch"] == [8, 5, 5] and p["lq_aspect"] == 4.0
    assert p["lambda"] in p["lambdas_tried"] and len(p["validation_rmse"]) == 3
    assert p["validation_rmse"][p["lambdas_tried"].index(p["lambda"])] == min(p["validation_rmse"])
    assert 0 < min(p["validation_rmse"]) < 1 and p["validation_rmse_trilinear"] > 0
    assert a.arrays["W"].shape == (200, 200) and a.training["pairs"] == 4000
    assert len(a.training["realization_parameters"]) == 3  # one per axis i, j, k
    path = save_model(tmp_path / "lin.iqtm", a)
    loaded = load_model(path)
    assert np.array_equal(loaded.arrays["W"], a.arrays["W"]) and loaded.params["lambda"] == p["lambda"]


def test_model_refuses_mismatched_factor_method_and_patch(colin, icbm_t1, tmp_path):
    image, mask = colin
    model = _small_train(icbm_t1)
    path = save_model(tmp_path / "lin.iqtm", model)
    lq, _ = simulate(image, factor=4, axis="k", snr=20, seed=1, mask=mask)
    out = api.enhance(lq, "linear", model=path)
    assert out.volume.array.shape == (lq.array.shape[0] * 4,) + lq.array.shape[1:]
    with pytest.raises(ModelError, match="×4"):
        api.enhance(lq, "linear", model=path, factor=3)
    with pytest.raises(ModelError, match="×4"):  # the method called directly, bypassing the API's check
        classic.SPECS["linear"].enhance(np.ones((6, 20, 20), np.float32), 3, load_model(path), "cpu",
                                        None, stride_inplane=1, stride_thick=1, batch_size=100)
    foreign = dataclasses.replace(model, method="forest")
    with pytest.raises(ModelError, match="not a linear model"):
        api.enhance(lq, "linear", model=save_model(tmp_path / "f.iqtm", foreign))
    bad_patch = dataclasses.replace(model, params=dict(model.params, lq_patch=[3, 5, 5]))
    with pytest.raises(ModelError, match="patch"):
        api.enhance(lq, "linear", model=bad_patch)
    with pytest.raises(InputError, match="smaller than"):
        tiny = Volume(lq.array[:, :3, :3].copy(), lq.spacing, lq.origin, lq.direction)
        api.enhance(tiny, "linear", model=path, axis="k")
