"""Classic IQT baseline ``forest``: the trees stored as arrays predict exactly as scikit-learn's,
training is deterministic, models refuse inputs they were not trained for."""
import dataclasses

import numpy as np
import pytest

from IQTEnhanceLib import api
from IQTEnhanceLib.errors import InputError, ModelError
from IQTEnhanceLib.methods import classic
from IQTEnhanceLib.models import load_model, save_model
from IQTEnhanceLib.simulate import simulate


@pytest.mark.parametrize("kind", ["extra", "random"])
def test_exported_trees_predict_like_scikit_learn(kind):
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 12)).astype(np.float32)
    Y = np.stack([X[:, 0] * X[:, 1], np.sin(3 * X[:, 2]), (X[:, 3] > 0.2).astype(np.float32)], axis=1)
    forest = (ExtraTreesRegressor(6, min_samples_leaf=2, random_state=0) if kind == "extra" else
              RandomForestRegressor(6, min_samples_leaf=2, max_samples=0.5, random_state=0)).fit(X, Y)
    arrays = classic.export_trees(forest.estimators_)
    # training rows sit exactly on either side of thresholds: the float32 rounding must not flip them
    queries = np.concatenate([X[:1000], rng.normal(size=(1000, 12)).astype(np.float32)])
    expected = forest.predict(queries)
    got = classic.predict_trees(arrays, queries)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(expected).max() > 0.5  # a real, non-trivial prediction


def _small_forest(icbm_t1, seed=0, progress=None, cancel=None, **extra):
    image, mask = icbm_t1
    options = dict(samples=3000, realizations=1, trees=3, min_samples_leaf=20, lambdas="1e-5,1e-3")
    options.update(extra)
    return api.train("forest", [image], masks=[mask], factor=4, seed=seed, data_names=["fixture"],
                     progress=progress, cancel=cancel, **options)


def test_forest_training_is_deterministic_and_round_trips(icbm_t1, colin, tmp_path):
    a = _small_forest(icbm_t1, seed=0)
    b = _small_forest(icbm_t1, seed=0)
    c = _small_forest(icbm_t1, seed=2)
    for key in classic.FOREST_ARRAYS:
        assert np.array_equal(a.arrays[key], b.arrays[key]), key
    assert not np.array_equal(a.arrays["leaf_values"], c.arrays["leaf_values"])
    p = a.params
    assert p["trees"] == 3 and p["feature_components"] == 32 and p["target_components"] == 16
    assert p["lq_aspect"] == 4.0 and p["hq_patch"] == [8, 5, 5] and p["leaves"] == len(a.arrays["leaf_values"])
    assert 0 < p["validation_rmse"] < 1 and len(p["ridge_validation_rmse"]) == 2
    assert "scikit-learn" in a.training["trainer"]
    path = save_model(tmp_path / "forest.iqtm", a)
    loaded = load_model(path)
    assert not loaded.blobs  # arrays only: nothing is unpickled when a forest model is loaded
    image, mask = colin
    lq, _ = simulate(image, factor=4, axis="k", snr=20, seed=1, mask=mask)
    out_a = api.enhance(lq, "forest", model=a, stride_inplane=2)
    out_loaded = api.enhance(lq, "forest", model=path, stride_inplane=2)
    assert np.array_equal(out_a.volume.array, out_loaded.volume.array)
    assert out_a.volume.array.shape == (lq.array.shape[0] * 4,) + lq.array.shape[1:]


def test_forest_training_reports_each_tree_and_can_be_cancelled(icbm_t1):
    from IQTEnhanceLib.errors import CancelledError

    messages = []
    with pytest.raises(CancelledError):
        _small_forest(icbm_t1, trees=4, progress=lambda f, m: messages.append((f, m)),
                      cancel=lambda: any("growing tree 2/4" in m for _, m in messages))
    assert any("growing tree 1/4" in m for _, m in messages)
    assert not any("tree 3/4" in m for _, m in messages)
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions)


def test_forest_refuses_mismatched_models_and_options(icbm_t1, colin, tmp_path):
    image, mask = colin
    lq, _ = simulate(image, factor=4, axis="k", snr=20, seed=1, mask=mask)
    model = _small_forest(icbm_t1, trees=1)
    path = save_model(tmp_path / "forest.iqtm", model)
    with pytest.raises(ModelError, match="×4"):
        api.enhance(lq, "forest", model=path, factor=2)
    with pytest.raises(ModelError, match="not a forest model"):
        api.enhance(lq, "forest", model=dataclasses.replace(model, method="linear"))
    with pytest.raises(ModelError, match="not a linear model"):
        api.enhance(lq, "linear", model=path)
    broken = dataclasses.replace(model, arrays={k: v for k, v in model.arrays.items() if k != "leaf_values"})
    with pytest.raises(ModelError, match="lacks leaf_values"):
        api.enhance(lq, "forest", model=broken)
    with pytest.raises(InputError, match="stride_inplane"):
        api.enhance(lq, "forest", model=path, stride_inplane=0)
    with pytest.raises(InputError, match="kind"):
        _small_forest(icbm_t1, kind="boosted")
