"""Learned methods through the Slicer glue with a model file the user loads ("Load model file…"):
a small linear patch-regression model trained here on the ICBM 2009c crop (about 5 s), so these run
whether or not a shipped model exists yet."""
import numpy as np
import pytest

from slicer_helpers import AXIS_ALIGNED_RAS, OBLIQUE_RAS, add_lq_node, add_scalar_node, ijk_to_ras, node_ids, ras_bounds, scene, slicer

from IQTEnhanceLib import api
from IQTEnhanceLib.errors import InputError, ModelError
from IQTEnhanceLib.methods import available_methods, get_method
from IQTEnhanceSlicer import mrml, panel
from IQTEnhanceSlicer.logic import EnhanceLogic
from IQTEnhanceSlicer.runner import JobState

METHOD = "linear"


@pytest.fixture(scope="module")
def model_path(icbm_t1, tmp_path_factory):
    if METHOD not in available_methods():
        pytest.skip(f"method {METHOD} is not in this installation yet")
    spec = get_method(METHOD)
    small = {"samples": 4000, "realizations": 1}  # only the options this version of the method has
    options = {k: v for k, v in small.items() if k in {o.name for o in spec.train_options}}
    path = tmp_path_factory.mktemp("models") / "linear-test.iqtm"
    api.train(METHOD, [icbm_t1[0]], factor=4, masks=[icbm_t1[1]], output=path, name="linear-test", **options)
    return path


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "async"])
def test_a_loaded_model_file_enhances_onto_the_hq_grid(colin, model_path, blocking):
    s = scene()
    node = add_lq_node(s, colin[0], OBLIQUE_RAS)
    logic = EnhanceLogic(s)
    if blocking:
        out = logic.enhance(node, METHOD, model=str(model_path), device="cpu")
    else:
        finished = []
        run = logic.start_enhance(node, METHOD, model=model_path, device="cpu", on_finished=finished.extend,
                                  on_error=lambda m, d: pytest.fail(m))
        assert run.wait(timeout=120) and run.state is JobState.DONE
        out = finished[0].node
    assert out.GetName() == f"T1 {get_method(METHOD).label} x4"
    assert out.GetAttribute("IQTEnhance.model") == "linear-test"
    np.testing.assert_allclose(ras_bounds(out), ras_bounds(node), atol=1e-6)
    result = slicer.util.arrayFromVolume(out)
    trilinear = api.enhance(mrml.volume_from_node(node), "trilinear").volume.array
    assert result.shape == trilinear.shape and np.isfinite(result).all()
    assert not np.allclose(result, trilinear), "the model changes the trilinear estimate"
    # what the glue hands over is what the engine makes from the same volume and model: bit for bit
    # in this process; from the worker process up to float rounding (its BLAS may sum in another order)
    engine = api.enhance(mrml.volume_from_node(node), METHOD, model=model_path, device="cpu").volume
    if blocking:
        np.testing.assert_array_equal(result, engine.array)
    else:
        np.testing.assert_allclose(result, engine.array, rtol=1e-6, atol=1e-6 * float(np.abs(engine.array).max()))
    np.testing.assert_allclose(ijk_to_ras(out)[:3, 3], mrml.ijk_to_ras(engine)[:3, 3], atol=1e-6)


def test_a_volume_too_small_for_the_model_gives_a_clear_error(colin, model_path):
    s = scene()
    # 2 thick slices of 3x3 voxels: a 3-D volume, but narrower than the model's 5-voxel in-plane patch
    node = add_scalar_node(s, colin[0].array[20:22, 30:33, 30:33], (1, 1, 4), (0, 0, 0), AXIS_ALIGNED_RAS,
                           name="tiny")
    before = node_ids(s)
    with pytest.raises(InputError, match=r"smaller than the model|does not fit") as blocking_error:
        EnhanceLogic(s).enhance(node, METHOD, model=model_path, device="cpu")
    errors = []
    run = EnhanceLogic(s).start_enhance(node, METHOD, model=model_path, device="cpu",
                                        on_error=lambda m, d: errors.append(m))
    assert run.wait(timeout=60) and run.state is JobState.FAILED
    assert errors == [str(blocking_error.value)]  # the engine's own sentence, in the panel's message box
    assert node_ids(s) == before


def test_a_model_of_another_method_is_refused_before_any_work(colin, model_path):
    others = [m for m in available_methods() if m != METHOD and get_method(m).needs_model]
    if not others:
        pytest.skip("no other learned method in this installation yet")
    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    for other in others:
        with pytest.raises(ModelError, match=f"this is a {METHOD} model, not a {other} model"):
            EnhanceLogic(s).start_enhance(node, other, model=model_path, device="cpu")
    assert s.GetNumberOfNodes() == 2


def test_the_panel_lists_a_loaded_model_file(model_path):
    entries = panel.model_entries(METHOD, [str(model_path)])
    assert [e.label for e in entries][-2:] == ["linear-test.iqtm", panel.LOAD_MODEL_ITEM]
    assert panel.input_problems(object(), METHOD, str(model_path), "cpu") == []


def test_the_automatic_model_choice_follows_the_panels_contrast(colin, model_path, monkeypatch, tmp_path):
    """The panel's "Automatic" model with its Contrast choice: the Logic passes the contrast to the
    engine's choice of shipped model (here a T2 ×4 entry holding the test model)."""
    import shutil

    from IQTEnhanceLib import models

    shutil.copy(models.default_model_path(METHOD), tmp_path / "t1.iqtm")
    shutil.copy(model_path, tmp_path / "t2.iqtm")
    entries = [{"name": "t1", "method": METHOD, "factor": 4, "file": "t1.iqtm", "default": True},
               {"name": "t2", "method": METHOD, "factor": 4, "file": "t2.iqtm", "default": False, "contrast": "t2"}]
    monkeypatch.setattr(models, "shipped_manifest", lambda: entries)
    monkeypatch.setattr(models, "shipped_models_dir", lambda: tmp_path)
    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    used = {}
    for contrast in ("t1", "t2"):
        [out] = EnhanceLogic(s).enhance_outputs(node, METHOD, model=panel.AUTO_MODEL, device="cpu", contrast=contrast)
        used[contrast] = out.info["model"]
    assert used == {"t1": models.load_model(tmp_path / "t1.iqtm").name, "t2": "linear-test"}
