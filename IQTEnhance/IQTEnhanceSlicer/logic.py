"""The console API behind the Slicer module's Logic, against any MRML scene.

``IQTEnhance.py``'s Logic is a thin wrapper that passes ``slicer.mrmlScene`` and adds a QTimer to
pump :class:`AsyncRun`; the tests use this class directly on a ``slicer-core`` scene.
"""
from __future__ import annotations

from typing import Callable, Optional

from IQTEnhanceLib.errors import CancelledError

from .runner import BackgroundJob, JobState, ProgressUpdate
from .tasks import BASELINE_METHOD, EnhanceRequest, EnhanceTask, compare_requests


BACKENDS = ("process", "thread")


class AsyncRun:
    """A task running in the background; :meth:`pump` (main thread, e.g. from a QTimer) forwards
    progress and, once the work is done, makes the output nodes and calls back.

    ``backend``: ``"process"`` (default) runs the engine in a worker process
    (:class:`~.worker.ProcessJob`): full speed whatever Slicer's event loop does with the GIL, and
    Cancel ends it at once.  ``"thread"`` runs it in a thread of this process
    (:class:`~.runner.BackgroundJob`; cancel at the next patch batch).  ``worker_env``: extra
    environment variables of the worker process.

    Callbacks, all on the thread that calls :meth:`pump`:
    ``on_progress(ProgressUpdate)``, ``on_finished(list[EnhanceOutput])``,
    ``on_error(message, details)``, ``on_cancelled()``.
    """

    def __init__(self, task: EnhanceTask, *, on_progress=None, on_finished=None, on_error=None,
                 on_cancelled=None, name: str = "IQTEnhance", backend: str = "process",
                 worker_env: Optional[dict] = None):
        self.task = task
        self.on_progress = on_progress
        self.on_finished = on_finished
        self.on_error = on_error
        self.on_cancelled = on_cancelled
        if backend == "process":
            from .worker import ProcessJob

            self.job = ProcessJob(task, name=name, env=worker_env)
        elif backend == "thread":
            self.job = BackgroundJob(task.run, name=name)
        else:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
        self.backend = backend
        self.outputs: Optional[list] = None
        self.error_message = ""
        self.error_details = ""
        self.last_update = None       # the latest ProgressUpdate (the panel shows it while cancelling)
        self._reported = False
        self._timer = None

    def start(self) -> "AsyncRun":
        self.job.start()
        return self

    def cancel(self) -> None:
        self.job.cancel()

    @property
    def state(self) -> JobState:
        return self.job.state

    @property
    def done(self) -> bool:
        """True once the final callback was made."""
        return self._reported

    def pump(self) -> bool:
        """Forward progress; at the end make the nodes and call back.  False once all is over."""
        if self._reported:
            return False
        update = self.job.poll()
        if update is not None:
            self.last_update = update
            if self.on_progress is not None:
                self.on_progress(update)
        if not self.job.finished:
            return True
        self._reported = True
        state = self.job.state
        if state is JobState.DONE:
            try:
                self.outputs = self.task.finish(self.job.take_result())
            except Exception as exc:  # noqa: BLE001 - shown to the user like a worker error
                import traceback

                self._fail(str(exc), traceback.format_exc())
                return False
            if self.on_finished is not None:
                self.on_finished(self.outputs)
        elif state is JobState.FAILED:
            self._fail(self.job.error_message(), self._details())
        elif self.on_cancelled is not None:
            self.on_cancelled()
        return False

    def drive(self, timer) -> "AsyncRun":
        """Let ``timer`` (a started or startable ``qt.QTimer`` on the main thread) call :meth:`pump`
        until the run is over; then the timer is stopped, disconnected and released, so a finished run
        holds no Qt object.  An exception in a pump is logged and ends the run's pumping (it must
        never escape a Qt slot)."""
        self._timer = timer
        timer.connect("timeout()", self._tick)
        timer.start()
        return self

    def _tick(self) -> None:
        try:
            more = self.pump()
        except Exception:  # noqa: BLE001 - never let an exception escape a Qt timer slot
            import logging
            import traceback

            logging.error(traceback.format_exc())
            more = False
        if not more and self._timer is not None:
            timer, self._timer = self._timer, None
            timer.stop()
            timer.disconnect("timeout()", self._tick)
            if hasattr(timer, "deleteLater"):
                timer.deleteLater()

    def _details(self) -> str:
        log = "\n".join(self.job.log[-50:])
        return f"{self.job.error_details}\nLog:\n{log}" if log else self.job.error_details

    def _fail(self, message: str, details: str) -> None:
        self.error_message, self.error_details = message, details
        if self.on_error is not None:
            self.on_error(message, details)

    def wait(self, timeout: Optional[float] = None, poll_interval: float = 0.05) -> bool:
        """Pump until done (for scripts and tests that want the async path to completion)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pump():
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.job.wait(poll_interval)
        return True


class EnhanceLogic:
    """Enhance volume nodes of ``scene``.  All methods are called on the main thread."""

    def __init__(self, scene):
        self.scene = scene

    # -- requests ---------------------------------------------------------------------------------
    @staticmethod
    def request(method: str, model=None, device: str = "auto", *, extras: bool = False, factor=None,
                axis=None, contrast=None, **options) -> EnhanceRequest:
        return EnhanceRequest(method, model=model, device=device, options=options, factor=factor, axis=axis,
                              extras=extras, contrast=contrast)

    # -- blocking -------------------------------------------------------------------------------
    def enhance(self, input_node, method: str = "srep", model=None, device: str = "auto", output_node=None, *,
                extras: bool = False, factor=None, axis=None, progress: Optional[Callable] = None,
                cancel: Optional[Callable] = None, contrast=None, **options):
        """Enhance ``input_node`` and return the output volume node (blocking, in this thread).

        ``progress(fraction, message)`` and ``cancel()`` as in the engine; a cancel raises
        :class:`~IQTEnhanceLib.errors.CancelledError` and adds no node.  ``model`` None or "auto":
        the shipped model of ``contrast`` (t1, t2) whose factor matches the scan's spacing.
        """
        return self.enhance_outputs(input_node, method, model, device, output_node, extras=extras, factor=factor,
                                    axis=axis, progress=progress, cancel=cancel, contrast=contrast, **options)[0].node

    def enhance_outputs(self, input_node, method: str = "srep", model=None, device: str = "auto",
                        output_node=None, *, extras: bool = False, factor=None, axis=None, progress=None,
                        cancel=None, contrast=None, **options) -> list:
        request = self.request(method, model, device, extras=extras, factor=factor, axis=axis, contrast=contrast,
                               **options)
        task = EnhanceTask(self.scene, input_node, [request], output_node)
        return task.finish(task.run(progress, cancel))

    def compare(self, input_node, methods, *, device: str = "auto", models: Optional[dict] = None,
                options: Optional[dict] = None, baseline: str = BASELINE_METHOD, progress=None,
                cancel=None) -> list:
        """Run ``methods`` and the interpolation ``baseline`` on one input; the output nodes
        (baseline first).  Blocking."""
        task = EnhanceTask(self.scene, input_node, compare_requests(methods, device=device, models=models,
                                                                     options=options, baseline=baseline))
        return [o.node for o in task.finish(task.run(progress, cancel))]

    # -- non-blocking ---------------------------------------------------------------------------
    def start_enhance(self, input_node, method: str = "srep", model=None, device: str = "auto",
                      output_node=None, *, extras: bool = False, factor=None, axis=None, on_progress=None,
                      on_finished=None, on_error=None, on_cancelled=None, backend: str = "process",
                      worker_env: Optional[dict] = None, contrast=None, **options) -> AsyncRun:
        """Start in a worker process (``backend="thread"``: a thread); call :meth:`AsyncRun.pump` on
        the main thread until it returns False.

        Input errors are raised here, synchronously, before anything starts.
        """
        request = self.request(method, model, device, extras=extras, factor=factor, axis=axis, contrast=contrast,
                               **options)
        task = EnhanceTask(self.scene, input_node, [request], output_node)
        return AsyncRun(task, on_progress=on_progress, on_finished=on_finished, on_error=on_error,
                        on_cancelled=on_cancelled, name=f"IQTEnhance {method}", backend=backend,
                        worker_env=worker_env).start()

    def start_compare(self, input_node, methods, *, device: str = "auto", models=None, options=None,
                      baseline: str = BASELINE_METHOD, on_progress=None, on_finished=None, on_error=None,
                      on_cancelled=None, backend: str = "process", worker_env: Optional[dict] = None) -> AsyncRun:
        task = EnhanceTask(self.scene, input_node, compare_requests(methods, device=device, models=models,
                                                                     options=options, baseline=baseline))
        return AsyncRun(task, on_progress=on_progress, on_finished=on_finished, on_error=on_error,
                        on_cancelled=on_cancelled, name="IQTEnhance compare", backend=backend,
                        worker_env=worker_env).start()


__all__ = ["AsyncRun", "EnhanceLogic", "ProgressUpdate", "CancelledError"]
