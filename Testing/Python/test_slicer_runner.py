"""The background runner headless, with real engine work (patchwise reconstruction of the Colin27
crop): thread, progress queue, time-left estimate, cooperative cancel, one-time result hand-off."""
import threading
import time

import numpy as np
import pytest

from IQTEnhanceLib.errors import CancelledError, InputError
from IQTEnhanceLib.interpolation import upsample_array
from IQTEnhanceLib.patches import reconstruct_patchwise
from IQTEnhanceSlicer.runner import BackgroundJob, JobState, estimate_remaining, format_duration

FACTOR = 4


def patchwise_interpolation(lq: np.ndarray, batch_size: int = 64):
    """Real engine work with many batches: cubic B-spline of every 2x8x8 LQ patch, averaged on the HQ grid."""
    def work(progress, cancel):
        def predict(corners):
            patches = np.stack([lq[k:k + 2, j:j + 8, i:i + 8] for k, j, i in corners])
            return np.stack([upsample_array(p, FACTOR, 0, "bspline") for p in patches])

        return reconstruct_patchwise(lq.shape, FACTOR, 0, (2, 8, 8), (1, 4, 4), predict, batch_size=batch_size,
                                     progress=progress, cancel=cancel)
    return work


@pytest.fixture(scope="module")
def lq(colin):
    a = colin[0].array
    return a[:48].reshape(12, 4, *a.shape[1:]).mean(1).astype(np.float32)


def test_job_runs_in_a_thread_and_the_main_thread_stays_free(lq):
    job = BackgroundJob(patchwise_interpolation(lq, batch_size=16))
    main_thread_ticks, updates, threads = 0, [], set()

    inner = job._work
    job._work = lambda p, c: (threads.add(threading.current_thread().name), inner(p, c))[1]
    job.start()
    while not job.finished:  # what the QTimer does in Slicer, every 100 ms
        main_thread_ticks += 1
        update = job.poll()
        if update is not None:
            updates.append(update)
        time.sleep(0.005)
    assert job.state is JobState.DONE
    assert threads == {job.name} and threading.current_thread().name not in threads
    assert main_thread_ticks > 5, "the main thread kept running while the worker computed"
    result = job.take_result()
    # the hand-off is the worker's result: the same as running the work here, and close to the
    # whole-volume B-spline (each patch's spline sees only 2 slices, so not equal to it)
    np.testing.assert_array_equal(result, patchwise_interpolation(lq, batch_size=16)(None, None))
    whole = upsample_array(lq, FACTOR, 0, "bspline")
    assert np.corrcoef(result.ravel(), whole.ravel())[0, 1] > 0.95
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions) and len(updates) >= 2
    assert "patches" in job.log[-1]


def test_cancel_mid_run_stops_between_batches_and_hands_nothing_over(lq):
    batches_seen = threading.Event()
    resume = threading.Event()
    calls = []

    def work(progress, cancel):
        def gated_progress(fraction, message):
            calls.append(fraction)
            progress(fraction, message)
            if len(calls) == 2:       # after the first batch: let the main thread cancel now
                batches_seen.set()
                resume.wait(10)
        return patchwise_interpolation(lq, batch_size=16)(gated_progress, cancel)

    job = BackgroundJob(work).start()
    assert batches_seen.wait(30)
    job.cancel()
    assert job.state is JobState.CANCELLING
    resume.set()
    assert job.wait(30)
    assert job.state is JobState.CANCELLED
    assert 0 < calls[-1] < 1, "stopped mid-run, not after the last batch"
    with pytest.raises(RuntimeError, match="no result"):
        job.take_result()


def test_cancel_after_the_worker_finished_but_before_the_hand_off_drops_the_result(lq):
    job = BackgroundJob(patchwise_interpolation(lq)).start()
    assert job.wait(60) and job.state is JobState.DONE
    job.cancel()
    assert job.state is JobState.CANCELLED
    with pytest.raises(RuntimeError):
        job.take_result()


def test_result_is_handed_off_exactly_once(lq):
    job = BackgroundJob(patchwise_interpolation(lq)).start()
    assert job.wait(60)
    assert job.take_result().shape == (48, 72, 64)
    with pytest.raises(RuntimeError, match="already taken"):
        job.take_result()
    job.cancel()  # too late to matter
    assert job.state is JobState.DONE


def test_engine_errors_are_kept_with_their_traceback(lq):
    def work(progress, cancel):
        return reconstruct_patchwise(lq.shape, FACTOR, 0, (40, 8, 8), (1, 4, 4), lambda c: None,
                                     progress=progress, cancel=cancel)

    job = BackgroundJob(work).start()
    assert job.wait(30) and job.state is JobState.FAILED
    assert isinstance(job.error, InputError)
    assert job.error_message() == "patch of 40 voxels does not fit an axis of 12 voxels"
    assert "Traceback" in job.error_details and "reconstruct_patchwise" in job.error_details


def test_a_cancelled_engine_call_raises_cancelled_error_in_the_worker(lq):
    seen = []

    def work(progress, cancel):
        try:
            return patchwise_interpolation(lq)(progress, lambda: True)
        except CancelledError:
            seen.append(True)
            raise

    job = BackgroundJob(work).start()
    assert job.wait(30) and job.state is JobState.CANCELLED and seen == [True]
    assert job.error is None


def test_time_left_is_estimated_once_there_is_enough_progress():
    clock = iter([0.0, 0.0, 0.5, 10.0, 30.0]).__next__
    job = BackgroundJob(lambda p, c: None, clock=clock)
    job.started_at = clock()                      # 0.0
    job._progress(0.01, "starting")               # at 0.0
    assert job.poll().remaining is None
    job._progress(0.25, "a quarter")              # at 0.5 s: too early to say
    assert job.poll().remaining is None
    job._progress(0.25, "a quarter")              # at 10 s
    update = job.poll()
    assert update.remaining == pytest.approx(30.0) and update.remaining_text() == "30 s"
    assert estimate_remaining(1.0, 5.0) == 0.0
    assert format_duration(3725) == "1 h 02 min" and format_duration(75) == "1 min 15 s"


def test_a_job_starts_once():
    job = BackgroundJob(lambda p, c: 1).start()
    with pytest.raises(RuntimeError, match="already started"):
        job.start()
    assert job.wait(10)
