"""Run one engine call in a background thread and hand its result back to the main thread.

Pure ``threading``/``queue``, no Qt: the Slicer panel polls :meth:`BackgroundJob.poll` from a QTimer,
the tests poll it in a loop.  The contract that keeps the MRML scene safe:

* the worker runs ``work(progress, cancel)`` and touches nothing but the engine (no MRML nodes);
* progress goes through a queue; :meth:`poll` (main thread) drains it and returns the latest update
  with the elapsed time and an estimate of the time left;
* :meth:`cancel` sets a flag the engine checks between patch batches (:class:`~IQTEnhanceLib.progress.Reporter`);
  the engine then raises :class:`~IQTEnhanceLib.errors.CancelledError` and the job ends CANCELLED;
* the result is handed off once, by :meth:`take_result` on the main thread, which is where output
  nodes are made.  A cancel requested before that hand-off wins: the result is dropped, so a
  cancelled run never leaves a node behind even if the engine had just finished.
"""
from __future__ import annotations

import dataclasses
import enum
import queue
import threading
import time
import traceback
from typing import Any, Callable, Optional

from IQTEnhanceLib.errors import CancelledError, IQTError


class JobState(str, enum.Enum):
    PENDING = "pending"          # created, not started
    RUNNING = "running"
    CANCELLING = "cancelling"    # cancel requested, the worker has not stopped yet
    DONE = "done"                # finished with a result (not yet / already taken)
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.CANCELLED, JobState.FAILED)


@dataclasses.dataclass
class ProgressUpdate:
    fraction: float                # 0..1 of the whole job
    message: str                   # stage text, e.g. "IQT-SRep: patches 1200/5000"
    elapsed: float                 # seconds since start
    remaining: Optional[float]     # estimated seconds left; None until it can be estimated

    def remaining_text(self) -> str:
        return format_duration(self.remaining) if self.remaining is not None else ""


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def estimate_remaining(fraction: float, elapsed: float) -> Optional[float]:
    """Linear extrapolation of the time left.  Not shown before 2% and 1 s: earlier, model loading
    and the first batch dominate and the estimate jumps around."""
    if fraction < 0.02 or elapsed < 1.0 or fraction >= 1.0:
        return 0.0 if fraction >= 1.0 else None
    return elapsed * (1.0 - fraction) / fraction


class JobResultMixin:
    """What every job kind shares: the one-time result hand-off and the run time."""

    def _take(self):
        if self._state is not JobState.DONE:
            raise RuntimeError(f"{self.name} has no result (state {self._state.value})")
        if self._result_taken:
            raise RuntimeError(f"the result of {self.name} was already taken")
        self._result_taken = True
        result, self._result = self._result, None
        return result

    @property
    def seconds(self) -> Optional[float]:
        if self.started_at is None:
            return None
        return (self.finished_at or self._clock()) - self.started_at


class BackgroundJob(JobResultMixin):
    """``work(progress, cancel) -> result`` in a daemon thread.

    ``progress(fraction, message)`` may be called from the worker as often as it likes (it only puts
    on a queue); ``cancel()`` returns True once :meth:`cancel` was called.
    """

    def __init__(self, work: Callable[[Callable, Callable], Any], name: str = "IQTEnhance job",
                 clock: Callable[[], float] = time.monotonic):
        self._work = work
        self.name = name
        self._clock = clock
        self._queue: "queue.Queue[tuple]" = queue.Queue()
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._state = JobState.PENDING
        self._result = None
        self._result_taken = False
        self.error: Optional[BaseException] = None
        self.error_details = ""          # traceback text for the "details" of an error box
        self.log: list = []              # stage messages, in order (deduplicated), for error details
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self.last_update: Optional[ProgressUpdate] = None
        self._thread: Optional[threading.Thread] = None

    # -- main-thread API ----------------------------------------------------------------------
    @property
    def state(self) -> JobState:
        with self._lock:
            return self._state

    @property
    def finished(self) -> bool:
        return self.state.finished

    def start(self) -> "BackgroundJob":
        with self._lock:
            if self._state is not JobState.PENDING:
                raise RuntimeError(f"{self.name} was already started")
            self._state = JobState.RUNNING
        self.started_at = self._clock()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the worker to stop at its next progress/cancel check (cooperative)."""
        self._cancel.set()
        with self._lock:
            if self._state in (JobState.PENDING, JobState.RUNNING):
                self._state = JobState.CANCELLING if self._thread is not None else JobState.CANCELLED
            elif self._state is JobState.DONE and not self._result_taken:
                # finished but not handed off: the user asked to cancel, so no result appears
                self._state = JobState.CANCELLED
                self._result = None
        if self._thread is None:
            self._finished.set()

    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def poll(self) -> Optional[ProgressUpdate]:
        """Drain the progress queue; the latest update (or None when nothing new arrived)."""
        latest = None
        while True:
            try:
                fraction, message, stamp = self._queue.get_nowait()
            except queue.Empty:
                break
            latest = (fraction, message, stamp)
        if latest is None:
            return None
        fraction, message, stamp = latest
        elapsed = stamp - (stamp if self.started_at is None else self.started_at)
        self.last_update = ProgressUpdate(fraction, message, elapsed, estimate_remaining(fraction, elapsed))
        return self.last_update

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the worker has finished (True) or ``timeout`` passed (False)."""
        return self._finished.wait(timeout)

    def take_result(self):
        """The result, exactly once, on the main thread; raises if the job did not finish DONE."""
        with self._lock:
            return self._take()

    def error_message(self) -> str:
        """One line for the user: the engine's own sentence for the errors it raises on purpose."""
        if self.error is None:
            return ""
        if isinstance(self.error, IQTError):
            return str(self.error)
        return f"{type(self.error).__name__}: {self.error}"

    # -- worker -------------------------------------------------------------------------------
    def _progress(self, fraction: float, message: str = "") -> None:
        self._queue.put((float(fraction), str(message), self._clock()))
        if message and (not self.log or self.log[-1] != message):
            self.log.append(message)

    def _run(self) -> None:
        try:
            result = self._work(self._progress, self._cancel.is_set)
        except CancelledError:
            self._end(JobState.CANCELLED)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, never lost
            self.error = exc
            self.error_details = traceback.format_exc()
            self._end(JobState.FAILED)
        else:
            with self._lock:
                if self._cancel.is_set():
                    self._state = JobState.CANCELLED
                else:
                    self._result = result
                    self._state = JobState.DONE
            self.finished_at = self._clock()
            self._finished.set()

    def _end(self, state: JobState) -> None:
        with self._lock:
            self._state = state
        self.finished_at = self._clock()
        self._finished.set()
