"""The console API (blocking and non-blocking) on slicer-core's real MRML scene with real engine work:
output geometry to 1e-6 mm, input untouched, cancel adds no node, clear errors, every method."""
import numpy as np
import pytest

from slicer_helpers import (AXIS_ALIGNED_RAS, OBLIQUE_RAS, add_lq_node, add_scalar_node, ijk_to_ras,
                            node_ids, ras_bounds, scene, slicer)

from IQTEnhanceLib import api
from IQTEnhanceLib.errors import CancelledError, InputError, ModelError
from IQTEnhanceLib.grid import hq_geometry
from IQTEnhanceLib.methods import available_methods, get_method
from IQTEnhanceSlicer import mrml, panel
from IQTEnhanceSlicer.logic import EnhanceLogic
from IQTEnhanceSlicer.runner import JobState

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
GEOMETRIES = pytest.mark.parametrize("directions", [AXIS_ALIGNED_RAS, OBLIQUE_RAS], ids=["axis-aligned", "oblique"])
# Methods runnable here: no model needed, or a shipped model exists (learned methods join as they land)
RUNNABLE = [e.name for e in panel.method_entries() if e.ready]


def expected_ijk_to_ras(input_node, factor=4, axis="k"):
    lq = mrml.volume_from_node(input_node)
    g = hq_geometry(lq, factor, axis)
    m = np.eye(4)
    m[:3, :3] = g["direction"] * g["spacing"][None, :]
    m[:3, 3] = g["origin"]
    return RAS_TO_LPS @ m, g["shape"]


@GEOMETRIES
def test_blocking_enhance_makes_a_new_node_with_the_hq_geometry(colin, directions):
    s = scene()
    node = add_lq_node(s, colin[0], directions)
    before_ids = node_ids(s)
    before_array = slicer.util.arrayFromVolume(node).copy()
    before_matrix = ijk_to_ras(node)

    out = EnhanceLogic(s).enhance(node, "trilinear")

    assert out.GetID() not in before_ids and out.GetScene() is s
    assert out.GetName() == "T1 Trilinear x4"
    expected, shape = expected_ijk_to_ras(node)
    np.testing.assert_allclose(ijk_to_ras(out), expected, atol=1e-6)
    assert slicer.util.arrayFromVolume(out).shape == tuple(shape)
    np.testing.assert_allclose(out.GetSpacing(), [1.0, 1.0, 1.0], atol=1e-6)  # 4 mm slices -> 1 mm
    # same physical extent (the boxes of the voxels), also when oblique
    np.testing.assert_allclose(ras_bounds(out), ras_bounds(node), atol=1e-6)
    # the input node is untouched
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before_array)
    np.testing.assert_allclose(ijk_to_ras(node), before_matrix, atol=0)
    # voxels are the engine's, passed through unchanged
    engine = api.enhance(mrml.volume_from_node(node), "trilinear").volume
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), engine.array)
    # window/level from the input
    assert (out.GetDisplayNode().GetWindow(), out.GetDisplayNode().GetLevel()) == (600.0, 350.0)
    assert out.GetAttribute("IQTEnhance.method") == "trilinear"


@pytest.mark.parametrize("method", RUNNABLE)
def test_every_available_method_runs_from_the_console(colin, method):
    s = scene()
    node = add_lq_node(s, colin[0], OBLIQUE_RAS)
    n_before = s.GetNumberOfNodes()
    out = EnhanceLogic(s).enhance(node, method, device="cpu")
    result = slicer.util.arrayFromVolume(out)
    factor = round(4.0 / out.GetSpacing()[2])  # the input has 4 mm slices; a model may up-sample x2..x8
    expected, shape = expected_ijk_to_ras(node, factor=factor)
    assert result.shape == tuple(shape)
    np.testing.assert_allclose(ijk_to_ras(out), expected, atol=1e-6)
    np.testing.assert_allclose(ras_bounds(out), ras_bounds(node), atol=1e-6)
    assert np.isfinite(result).all() and result.std() > 0
    assert out.GetName() == f"T1 {get_method(method).label} x{factor}"
    assert s.GetNumberOfNodes() > n_before


def test_output_volume_can_be_reused_and_input_cannot_be_the_output(colin):
    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    logic = EnhanceLogic(s)
    first = logic.enhance(node, "nearest")
    ids = node_ids(s)
    again = logic.enhance(node, "trilinear", output_node=first)
    assert again is first and node_ids(s) == ids
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(first),
                                  api.enhance(mrml.volume_from_node(node), "trilinear").volume.array)
    with pytest.raises(InputError, match="must differ from the input"):
        logic.enhance(node, "trilinear", output_node=node)


def test_cancel_mid_run_adds_no_node(colin):
    s = scene()
    node = add_lq_node(s, colin[0], OBLIQUE_RAS)
    before = node_ids(s)
    seen = []

    def progress(fraction, message):
        seen.append(fraction)

    with pytest.raises(CancelledError):
        EnhanceLogic(s).enhance(node, "bspline", progress=progress, cancel=lambda: len(seen) >= 1)
    assert seen, "the engine reported progress before it was cancelled"
    assert node_ids(s) == before


def test_non_blocking_run_reports_progress_and_hands_the_node_over(colin):
    s = scene()
    node = add_lq_node(s, colin[0], OBLIQUE_RAS)
    updates, finished = [], []
    run = EnhanceLogic(s).start_enhance(node, "bspline", on_progress=updates.append, on_finished=finished.extend,
                                        on_error=lambda m, d: pytest.fail(m))
    assert run.wait(timeout=60)
    assert run.state is JobState.DONE and len(finished) == 1
    out = finished[0].node
    expected, _ = expected_ijk_to_ras(node)
    np.testing.assert_allclose(ijk_to_ras(out), expected, atol=1e-6)
    assert updates and updates[-1].fraction == pytest.approx(1.0)
    assert not run.pump()  # nothing more after the hand-off


class FakeTimer:
    """What AsyncRun.drive uses of a qt.QTimer: connect/disconnect, start/stop, deleteLater."""

    def __init__(self):
        self.slots, self.running, self.deleted = [], False, False

    def connect(self, signal, slot):
        self.slots.append(slot)

    def disconnect(self, signal, slot):
        self.slots.remove(slot)

    def start(self):
        self.running = True

    def stop(self):
        self.running = False

    def deleteLater(self):
        self.deleted = True

    def fire(self):
        for slot in list(self.slots):
            slot()


def test_a_driven_run_pumps_itself_and_releases_its_timer(colin):
    """One run object: the panel's timer pumps it; when the run ends the timer is stopped,
    disconnected and released, and the last progress stays readable (shown while cancelling)."""
    import time

    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    finished = []
    timer = FakeTimer()
    run = EnhanceLogic(s).start_enhance(node, "bspline", on_finished=finished.extend).drive(timer)
    assert timer.running and timer.slots
    deadline = time.monotonic() + 60
    while timer.slots and time.monotonic() < deadline:
        timer.fire()
        time.sleep(0.02)
    assert run.done and len(finished) == 1
    assert not timer.running and not timer.slots and timer.deleted
    assert run.last_update is not None and run.last_update.fraction == pytest.approx(1.0)


def test_non_blocking_cancel_leaves_the_scene_as_it_was(colin):
    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    before = node_ids(s)
    cancelled = []
    run = EnhanceLogic(s).start_enhance(node, "bspline", on_cancelled=lambda: cancelled.append(True),
                                        on_finished=lambda o: pytest.fail("finished after cancel"))
    run.cancel()
    assert run.wait(timeout=60)
    assert cancelled == [True] and run.state is JobState.CANCELLED
    assert node_ids(s) == before


def test_worker_error_is_reported_with_details_and_adds_no_node(colin):
    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    before = node_ids(s)
    errors = []
    # a factor of 1 is refused on the main thread, before anything starts
    with pytest.raises(InputError, match="factor"):
        EnhanceLogic(s).start_enhance(node, "trilinear", factor=1)
    # a worker whose memory limit is tiny refuses the run there: an error with details, no node
    run = EnhanceLogic(s).start_enhance(node, "trilinear", worker_env={"IQT_MEMORY_LIMIT": "1K"},
                                        on_error=lambda m, d: errors.append((m, d)))
    assert run.wait(timeout=60)
    assert run.state is JobState.FAILED
    (message, details), = errors
    assert "memory" in message and "Traceback" in details and "Log:" in details
    assert node_ids(s) == before


def test_compare_runs_the_baseline_and_each_method_once(colin):
    s = scene()
    node = add_lq_node(s, colin[0], OBLIQUE_RAS)
    methods = ["bspline", "nearest"]  # the comparison logic is the same for every method; these are fast
    messages = []
    nodes = EnhanceLogic(s).compare(node, methods + ["trilinear"], device="cpu",
                                    progress=lambda f, m: messages.append((f, m)))
    assert [n.GetAttribute("IQTEnhance.method") for n in nodes] == ["trilinear"] + methods
    # each engine message says which method it is about; progress runs once from 0 to 1 over all
    assert all(m.startswith(("[1/3] Trilinear: ", "[2/3] Cubic B-spline: ", "[3/3] Nearest neighbour: "))
               for _, m in messages), messages
    assert {m[:5] for _, m in messages} == {"[1/3]", "[2/3]", "[3/3]"}
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert len({n.GetName() for n in nodes}) == len(nodes)
    for a in nodes:
        np.testing.assert_allclose(ras_bounds(a), ras_bounds(node), atol=1e-6)


def _label_map(s, colin):
    return add_scalar_node(s, (colin[1].array[:12] > 0).astype(np.int16), (1, 1, 4), (0, 0, 0), AXIS_ALIGNED_RAS,
                           class_name="vtkMRMLLabelMapVolumeNode", name="brain mask")


def _mask_in_scalar_node(s, colin):
    return add_scalar_node(s, (colin[1].array[:12] > 0).astype(np.uint8), (1, 1, 4), (0, 0, 0), AXIS_ALIGNED_RAS,
                           name="mask")


def _vector(s, colin):
    node = s.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(node, np.ones((12, 20, 20, 3), np.uint8))
    return node


def _all_zero(s, colin):
    return add_scalar_node(s, np.zeros((12, 20, 20), np.float32), (1, 1, 4), (0, 0, 0), AXIS_ALIGNED_RAS, name="blank")


def _no_voxels(s, colin):
    return s.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")


def _single_slice(s, colin):
    return add_scalar_node(s, colin[0].array[20:21], (1, 1, 4), (0, 0, 0), AXIS_ALIGNED_RAS, name="one slice")


@pytest.mark.parametrize("make, words", [
    (_label_map, "label map"),
    (_mask_in_scalar_node, "label map"),
    (_vector, "vector"),
    (_all_zero, "every voxel is 0"),
    (_no_voxels, "empty"),
    (_single_slice, "too small"),
], ids=["label-map-node", "mask-in-scalar-node", "vector", "all-zero", "no-voxels", "single-slice"])
@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "async"])
def test_bad_input_gives_one_clear_error_and_no_node(colin, make, words, blocking):
    s = scene()
    node = make(s, colin)
    before = node_ids(s)
    logic = EnhanceLogic(s)
    with pytest.raises(InputError, match=words):
        if blocking:
            logic.enhance(node, "trilinear")
        else:
            logic.start_enhance(node, "trilinear")  # refused before any thread starts
    assert node_ids(s) == before


LEARNED = [m for m in available_methods() if get_method(m).needs_model]


# Patch-regression methods need whole patches; the networks pad any volume (the networks accept "a volume
# whose size is not a multiple of anything must work"), so for them a tiny volume must succeed.
PATCH_METHODS = {"srep", "linear", "forest"}


@pytest.mark.parametrize("method", [m for m in LEARNED if m in RUNNABLE] or
                         [pytest.param("srep", marks=pytest.mark.skip(reason="no learned method with a shipped model yet"))])
def test_volume_too_small_for_the_model_gives_a_clear_error(colin, method):
    s = scene()
    # 2 thick slices of 3x3 voxels: a 3-D volume, but smaller than any patch model's patch
    node = add_scalar_node(s, colin[0].array[20:22, 30:33, 30:33], (1, 1, 4), (0, 0, 0), AXIS_ALIGNED_RAS,
                           name="tiny")
    before = node_ids(s)
    if method not in PATCH_METHODS:
        out = EnhanceLogic(s).enhance(node, method, device="cpu")
        assert out.GetImageData().GetDimensions() == (3, 3, 8)
        return
    with pytest.raises((InputError, ModelError), match="patch|fit|small"):
        EnhanceLogic(s).enhance(node, method, device="cpu")
    assert node_ids(s) == before


def test_unknown_options_methods_and_missing_models_fail_before_any_work(colin, tmp_path):
    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    logic = EnhanceLogic(s)
    with pytest.raises(InputError, match="no option"):
        logic.enhance(node, "trilinear", stride=2)
    with pytest.raises(InputError, match="unknown method"):
        logic.enhance(node, "magic")
    with pytest.raises(InputError, match="takes no model"):
        logic.enhance(node, "trilinear", model=tmp_path / "x.iqtm")
    with pytest.raises(InputError, match="no extra maps"):
        logic.enhance(node, "trilinear", extras=True)
    missing = [m for m in LEARNED if m not in RUNNABLE]
    for method in missing:
        with pytest.raises((ModelError, InputError)):
            logic.enhance(node, method)
    garbage = tmp_path / "garbage.iqtm"
    garbage.write_bytes(b"not a zip file")
    for method in LEARNED:  # the model is loaded before any thread starts
        with pytest.raises(ModelError, match="corrupt|not an IQTEnhance"):
            logic.start_enhance(node, method, model=garbage, device="cpu")
        with pytest.raises(ModelError, match="no such model file"):
            logic.start_enhance(node, method, model=tmp_path / "absent.iqtm", device="cpu")
    assert s.GetNumberOfNodes() == 2  # the input and its display node


WITH_EXTRAS = [m for m in RUNNABLE if get_method(m).extras]


@pytest.mark.parametrize("method", WITH_EXTRAS or
                         [pytest.param("srep", marks=pytest.mark.skip(reason="no method with extra maps has a model yet"))])
def test_extra_maps_become_nodes_on_the_output_grid(colin, method):
    s = scene()
    node = add_lq_node(s, colin[0], OBLIQUE_RAS)
    outputs = EnhanceLogic(s).enhance_outputs(node, method, device="cpu", extras=True)
    (output,) = outputs
    assert set(output.extra_nodes) == set(get_method(method).extras)
    for name, extra in output.extra_nodes.items():
        assert extra.GetName() == f"{output.node.GetName()} {name}"
        np.testing.assert_allclose(ijk_to_ras(extra), ijk_to_ras(output.node), atol=1e-9)
        assert np.isfinite(slicer.util.arrayFromVolume(extra)).all()
