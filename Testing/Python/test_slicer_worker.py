"""The background run in a worker process, under a main loop that behaves like Slicer's: the Qt
event loop holds the GIL in C++ between timer callbacks.  Simulated here by a C call that keeps
the GIL for 100 ms (``ctypes.PyDLL(None).usleep``) before each ``pump()``."""
import ctypes
import gc
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from slicer_helpers import AXIS_ALIGNED_RAS, add_lq_node, node_ids, scene

from IQTEnhanceSlicer import worker
from IQTEnhanceSlicer.logic import EnhanceLogic
from IQTEnhanceSlicer.runner import JobState

ROOT = Path(__file__).resolve().parents[2]
hold_gil = ctypes.PyDLL(None).usleep      # PyDLL: the GIL stays held during the call


@pytest.fixture(scope="module")
def no_spams(tmp_path_factory):
    """Worker environment in which `import spams` fails, as in Slicer's Python."""
    folder = tmp_path_factory.mktemp("nospams")
    (folder / "spams").mkdir()
    (folder / "spams" / "__init__.py").write_text("raise ImportError('SPAMS hidden, as in Slicer')\n")
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(ROOT / "IQTEnhance")])}


def temp_folders() -> set:
    return {p.name for p in Path(tempfile.gettempdir()).glob("iqtenhance-*")}


def run_like_slicer(run, hold_s=0.1):
    """Alternate 'C++ holds the GIL for hold_s' and 'a timer calls pump()'; returns pump durations."""
    durations = []
    while True:
        hold_gil(int(hold_s * 1e6))
        started = time.perf_counter()
        more = run.pump()
        durations.append(time.perf_counter() - started)
        if not more:
            return durations


@pytest.fixture(scope="module")
def larger_colin(colin):
    """The Colin27 crop tiled 3×3 in-plane: long enough a run that the worker's start (a new Python
    importing torch, ~2 s) is the "+ 2 s" of the criterion, not most of the time measured."""
    from IQTEnhanceLib.volume import Volume

    hq = colin[0]
    return Volume(np.tile(hq.array, (1, 3, 3)), hq.spacing, hq.origin, hq.direction)


@pytest.mark.parametrize("method", ["srep", "dl"])
def test_worker_process_runs_at_full_speed_under_a_gil_holding_main_loop(larger_colin, no_spams, method):
    worker.prestart(env=no_spams)     # as the panel does when it opens (imports torch in the worker only)
    s = scene()
    node = add_lq_node(s, larger_colin, AXIS_ALIGNED_RAS)
    logic = EnhanceLogic(s)
    started = time.perf_counter()
    blocking_node = logic.enhance(node, method, device="cpu")
    blocking = time.perf_counter() - started
    expected = np.asarray(__import__("slicer").util.arrayFromVolume(blocking_node)).copy()

    finished = []
    run = logic.start_enhance(node, method, device="cpu", worker_env=no_spams, on_finished=finished.append)
    started = time.perf_counter()
    pumps = run_like_slicer(run)
    async_seconds = time.perf_counter() - started
    assert run.state is JobState.DONE and finished, run.error_message
    print(f"{method}: blocking {blocking:.2f} s, async under the simulated loop {async_seconds:.2f} s, "
          f"{len(pumps)} pumps, longest {max(pumps[:-1] or [0]):.3f} s, last {pumps[-1]:.3f} s")
    assert async_seconds <= 1.5 * blocking + 2.0
    assert max(pumps[:-1] or [0.0]) <= 0.25
    got = __import__("slicer").util.arrayFromVolume(finished[0][0].node)
    assert np.allclose(got, expected, atol=1e-4 * float(np.abs(expected).max()))


def start_slow_srep(colin, no_spams, **callbacks):
    """(scene, run, node ids before, temporary folders before) of a background SRep run that takes
    a few seconds (every in-plane position coded)."""
    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    before = node_ids(s), temp_folders()
    run = EnhanceLogic(s).start_enhance(node, "srep", device="cpu", worker_env=no_spams, stride_inplane=1,
                                        **callbacks)
    return s, run, before[0], before[1]


def test_cancel_kills_the_worker_at_once_and_leaves_nothing(colin, no_spams):
    cancelled = []
    s, run, before_nodes, before_temp = start_slow_srep(colin, no_spams, on_cancelled=lambda: cancelled.append(1))
    pid = run.job.pid
    deadline = time.monotonic() + 60
    while run.job.last_update is None or run.job.last_update.fraction <= 0.0:   # the engine has started
        run.pump()
        time.sleep(0.02)
        assert time.monotonic() < deadline
    started = time.perf_counter()
    run.cancel()
    assert time.perf_counter() - started < 1.0
    while run.pump():
        pass
    assert cancelled and run.state is JobState.CANCELLED
    assert run.job.worker.process.poll() is not None      # the worker was killed, not left running
    assert node_ids(s) == before_nodes
    assert temp_folders() == before_temp
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_killed_worker_is_an_error_not_a_hang(colin, no_spams):
    errors = []
    s, run, before_nodes, before_temp = start_slow_srep(
        colin, no_spams, on_error=lambda message, details: errors.append(message))
    time.sleep(0.5)
    os.kill(run.job.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while run.pump():
        time.sleep(0.02)
        assert time.monotonic() < deadline, "the run hangs after its worker was killed"
    assert run.state is JobState.FAILED
    assert errors and "killed" in errors[0] and "SIGKILL" in errors[0]
    assert node_ids(s) == before_nodes
    assert temp_folders() == before_temp


def test_worker_input_error_is_reported_with_its_sentence(colin, no_spams, tmp_path):
    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    errors = []
    run = EnhanceLogic(s).start_enhance(node, "srep", device="cpu", worker_env=no_spams, solver="spams",
                                        on_error=lambda message, details: errors.append((message, details)))
    while run.pump():
        time.sleep(0.02)
    assert errors and "SPAMS is not installed" in errors[0][0]
    assert "Traceback" in errors[0][1]


def test_twenty_runs_leave_memory_flat(colin, no_spams):
    psutil = pytest.importorskip("psutil")
    s = scene()
    node = add_lq_node(s, colin[0], AXIS_ALIGNED_RAS)
    logic = EnhanceLogic(s)
    rss = []
    for index in range(20):
        done = []
        run = logic.start_enhance(node, "trilinear", on_finished=done.append)
        while run.pump():
            time.sleep(0.01)
        assert done
        s.RemoveNode(done[0][0].node)
        del run, done
        gc.collect()
        rss.append(psutil.Process().memory_info().rss)
    # after warm-up, no growth beyond allocator noise (a leak of one output volume would be ~1 MB per run)
    assert rss[-1] - rss[4] < 8 * 1024 * 1024, [r // 1024 for r in rss]


def test_panel_imports_no_torch_and_still_lists_the_methods():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None          # torch cannot be imported at all
        sys.path.insert(0, %r)
        from IQTEnhanceSlicer import panel
        entries = panel.method_entries()
        devices = panel.device_entries()
        names = [e.name for e in entries]
        assert "srep" in names and "trilinear" in names, names
        assert [d.name for d in devices] == ["auto", "cpu", "cuda"]
        print("ok", len(names))
    """) % str(ROOT / "IQTEnhance")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
    probe = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        from IQTEnhanceSlicer import panel
        panel.method_entries(); panel.device_entries(); panel.default_method()
        print("torch" in sys.modules)
    """) % str(ROOT / "IQTEnhance")], capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "False", probe.stderr
