"""The engine work of an :class:`~.tasks.EnhanceTask` in a separate Python process.

Why a process.  Slicer's Qt event loop holds the Python GIL while it runs C++ code (PythonQt has no
thread support), so a Python worker *thread* runs only while the main thread happens to run Python:
measured with a main loop that holds the GIL for 100 ms between timer callbacks, a worker thread got
0.5% of its free speed.  A process has its own interpreter: it computes at full speed whatever the
main loop does, and Cancel can end it at once (SIGKILL), which a thread never allows.

Protocol, all through files in a private temporary folder (works the same on Windows, needs no
reader thread and so no GIL in the parent between two timer ticks):

* the parent writes ``input.npy`` + ``task.json`` (geometry, requests with model *paths*) and sends
  the folder's path, one line, to a worker's stdin;
* the worker (``python -m IQTEnhanceSlicer.worker``) appends ``fraction<TAB>message`` lines to
  ``progress.txt`` (at most ~20 per second), writes each result as ``result-N.npy`` (+ extras and
  ``result-N.json``) and ``done.json``, or on a fault ``error.json`` (one sentence, the traceback,
  whether it was bad input), and last ``finished``; then it waits for the next folder;
* :class:`ProcessJob` (parent, main thread) reads new progress lines on each :meth:`ProcessJob.poll`,
  checks the files and the process without blocking, loads the results once, and removes the folder
  in every case.  A worker that dies before ``finished`` (killed, out of memory, crashed) is reported
  as an error.

A new Python that imports torch needs ~2 s (measured: ``import torch`` alone 1.4-2.0 s on 2 cores),
so a worker that finished cleanly stays, idle, for the next run (:func:`prestart` starts one ahead of
time, e.g. when the panel opens: the GUI process itself never imports torch for it).  A cancelled or
failed run's worker is killed, never reused; an idle worker ends with Slicer (its stdin closes) or
after :data:`IDLE_SECONDS` unused.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import numpy as np

from .deps import module_available
from .runner import JobResultMixin, JobState, ProgressUpdate, estimate_remaining

MODULE_DIR = Path(__file__).resolve().parents[1]      # the folder holding IQTEnhanceLib and IQTEnhanceSlicer
PROGRESS_INTERVAL_S = 0.05
IDLE_SECONDS = 600.0


# -- worker processes (parent side) ---------------------------------------------------------------
class _Worker:
    """One worker process: ``submit(folder)`` hands it a task."""

    def __init__(self, python: str, env: dict):
        self.key = (python, tuple(sorted(env.items())))
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(MODULE_DIR)] + [p for p in [full_env.get("PYTHONPATH")] if p])
        full_env.update(env)
        self.process = subprocess.Popen([python, "-u", "-m", "IQTEnhanceSlicer.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full_env,
                                        cwd=tempfile.gettempdir())
        self.idle_since = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def submit(self, folder: Path) -> None:
        self.process.stdin.write((str(folder) + "\n").encode())
        self.process.stdin.flush()

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            self.process.stdin.close()
        except OSError:
            pass


_idle: list = []


def _take_idle(key) -> Optional[_Worker]:
    now = time.monotonic()
    found = None
    for worker in list(_idle):
        if not worker.alive or now - worker.idle_since > IDLE_SECONDS:
            _idle.remove(worker)
            worker.kill()
        elif found is None and worker.key == key:
            _idle.remove(worker)
            found = worker
    return found


def prestart(python: Optional[str] = None, env: Optional[dict] = None) -> None:
    """Start a worker ahead of time (it imports the engine and torch in its own process)."""
    python = python or worker_python()
    env = dict(env or {})
    worker = _take_idle((python, tuple(sorted(env.items()))))
    _idle.append(worker or _Worker(python, env))


def _acquire(python: str, env: dict) -> _Worker:
    return _take_idle((python, tuple(sorted(env.items())))) or _Worker(python, env)


def _release(worker: _Worker) -> None:
    if not worker.alive:
        return
    worker.idle_since = time.monotonic()
    for old in [w for w in _idle if w.key == worker.key]:   # one idle worker per configuration
        _idle.remove(old)
        old.kill()
    _idle.append(worker)


def shutdown_workers() -> None:
    """End every idle worker (Slicer's exit does it too: their stdin closes)."""
    while _idle:
        _idle.pop().kill()


atexit.register(shutdown_workers)


def worker_python() -> str:
    """The Python that runs the worker: Slicer's ``PythonSlicer`` inside Slicer (its own executable
    is the application, not an interpreter), else this interpreter."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and getattr(slicer, "app", None) is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def _request_record(request, folder: Path, index: int) -> dict:
    from IQTEnhanceLib.models import ModelFile, save_model

    model = request.model
    if isinstance(model, ModelFile):
        if model.path is not None and Path(model.path).is_file():
            model = str(model.path)
        else:   # an in-memory model: handed over as a file
            model = str(save_model(folder / f"model-{index}.iqtm", model))
    elif model is not None:
        model = str(model)
    return {"method": request.method, "model": model, "device": request.device,
            "options": request.engine_options(), "factor": request.factor, "axis": request.axis}


class ProcessJob(JobResultMixin):
    """Same interface as :class:`~.runner.BackgroundJob` (start, poll, cancel, finished, state,
    take_result, error_message, wait), running the task's requests in a child process."""

    def __init__(self, task, name: str = "IQTEnhance job", python: Optional[str] = None,
                 env: Optional[dict] = None, clock=time.monotonic):
        self.task = task
        self.name = name
        self.python = python or worker_python()
        self.extra_env = dict(env or {})
        self._clock = clock
        self._state = JobState.PENDING
        self.folder: Optional[Path] = None
        self.worker: Optional[_Worker] = None
        self._offset = 0
        self._latest = None
        self._result = None
        self._result_taken = False
        self.error: Optional[str] = None
        self.error_details = ""
        self.log: list = []
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self.last_update: Optional[ProgressUpdate] = None

    # -- main thread --------------------------------------------------------------------------
    def start(self) -> "ProcessJob":
        if self._state is not JobState.PENDING:
            raise RuntimeError(f"{self.name} was already started")
        self.folder = Path(tempfile.mkdtemp(prefix="iqtenhance-"))
        try:
            volume = self.task.input_volume
            np.save(self.folder / "input.npy", np.ascontiguousarray(volume.array))
            record = {"spacing": volume.spacing.tolist(), "origin": volume.origin.tolist(),
                      "direction": volume.direction.tolist(),
                      "requests": [_request_record(r, self.folder, i) for i, r in enumerate(self.task.requests)]}
            (self.folder / "task.json").write_text(json.dumps(record))
            self.worker = _acquire(self.python, self.extra_env)
            self.worker.submit(self.folder)
        except BaseException:
            if self.worker is not None:
                self.worker.kill()
            self._cleanup()
            raise
        self._state = JobState.RUNNING
        self.started_at = self._clock()
        return self

    def cancel(self) -> None:
        """End the worker at once (SIGKILL / TerminateProcess); nothing of it reaches the scene."""
        if self._state in (JobState.PENDING, JobState.RUNNING, JobState.CANCELLING):
            self._kill()
            self._state = JobState.CANCELLED
            self.finished_at = self._clock()
            self._cleanup()
        elif self._state is JobState.DONE and not self._result_taken:
            self._state = JobState.CANCELLED
            self._result = None
            self._cleanup()

    def cancel_requested(self) -> bool:
        return self._state is JobState.CANCELLED

    @property
    def state(self) -> JobState:
        self._check()
        return self._state

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def process(self) -> Optional[subprocess.Popen]:
        return self.worker.process if self.worker is not None else None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def poll(self) -> Optional[ProgressUpdate]:
        """New progress since the last call (None when nothing arrived); never blocks."""
        self._read_progress()
        self._check()     # reads the last lines too, before it removes the folder
        latest, self._latest = self._latest, None
        if latest is None:
            return None
        fraction, message = latest
        elapsed = self._clock() - (self.started_at or self._clock())
        self.last_update = ProgressUpdate(fraction, message, elapsed, estimate_remaining(fraction, elapsed))
        return self.last_update

    def wait(self, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else self._clock() + timeout
        while not self.finished:
            if deadline is not None and self._clock() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def take_result(self):
        """The results, exactly once, on the main thread; raises unless the job finished DONE."""
        self._check()
        return self._take()

    def error_message(self) -> str:
        return self.error or ""

    # -- internals ------------------------------------------------------------------------------
    def _read_progress(self) -> None:
        """New progress lines into the log; the newest into ``_latest`` until :meth:`poll` reports it."""
        if self.folder is None:
            return
        path = self.folder / "progress.txt"
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for line in data[:end].decode("utf-8", "replace").splitlines():
            fraction, _, message = line.partition("\t")
            try:
                self._latest = (float(fraction), message)
            except ValueError:
                continue
            if message and (not self.log or self.log[-1] != message):
                self.log.append(message)

    def _check(self) -> None:
        """Notice, without blocking, that the task ended (its ``finished`` file) or that the worker
        died; load the results or the error."""
        if self._state is not JobState.RUNNING or self.process is None:
            return
        ended = (self.folder / "finished").exists()
        code = self.process.poll()
        if not ended and code is None:
            return
        self._read_progress()
        self.finished_at = self._clock()
        try:
            if ended and (self.folder / "done.json").exists():
                self._result = _load_results(self.folder, len(self.task.requests))
                self._state = JobState.DONE
                _release(self.worker)
            else:
                if ended and code is None:
                    _release(self.worker)        # a clean failure (bad input): the worker is sound
                self._fail(code if code is not None else 1)
        except Exception as exc:  # noqa: BLE001 - unreadable results: an error for the user, not a crash
            self.error = f"the worker's results could not be read ({exc})"
            self.error_details = traceback.format_exc()
            self._state = JobState.FAILED
        finally:
            self._cleanup()

    def _fail(self, code: int) -> None:
        error_file = self.folder / "error.json"
        output = ""
        try:
            output = (self.folder / "output.txt").read_text(errors="replace")[-20000:]
        except OSError:
            pass
        if error_file.exists():
            try:
                record = json.loads(error_file.read_text())
                self.error = record.get("message") or "the worker failed"
                self.error_details = record.get("traceback", "") + ("\nWorker output:\n" + output if output else "")
                self._state = JobState.FAILED
                return
            except (OSError, ValueError):
                pass
        if code < 0:
            import signal

            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            self.error = (f"the processing process was killed ({name}); if nobody stopped it, it probably ran "
                          "out of memory: try a smaller volume or the CPU device")
        else:
            self.error = f"the processing process ended unexpectedly (exit code {code}); see the details"
        self.error_details = "Worker output:\n" + output
        self._state = JobState.FAILED

    def _kill(self) -> None:
        if self.worker is not None:
            self.worker.kill()

    def _cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __del__(self):
        try:
            if self._state is JobState.RUNNING:
                self._kill()
            self._cleanup()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _load_results(folder: Path, count: int) -> list:
    from IQTEnhanceLib.api import EnhanceResult
    from IQTEnhanceLib.volume import Volume

    results = []
    for index in range(count):
        record = json.loads((folder / f"result-{index}.json").read_text())

        def volume(name, geometry):
            return Volume(np.load(folder / name, allow_pickle=False), geometry["spacing"], geometry["origin"],
                          geometry["direction"])

        main = volume(f"result-{index}.npy", record["geometry"])
        extras = {name: volume(f"result-{index}-{name}.npy", record["geometry"]) for name in record["extras"]}
        results.append(EnhanceResult(main, extras, record["info"]))
    return results


# -- the child process ---------------------------------------------------------------------------
class _ProgressFile:
    """The child's progress callback: appends lines, at most one per PROGRESS_INTERVAL_S (and always
    the first and the last)."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")
        self.last = 0.0

    def __call__(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S and 0.0 < fraction < 1.0:
            return
        self.last = now
        self.file.write(f"{float(fraction):.4f}\t{' '.join(str(message).split())}\n")
        self.file.flush()


def run_worker(folder) -> int:
    """Run the task in ``folder`` (in the worker process); returns 0 or 2 (bad input) or 1."""
    folder = Path(folder)
    try:
        from IQTEnhanceLib.errors import IQTError
    except Exception:  # noqa: BLE001
        IQTError = ()  # noqa: N806
    try:
        from IQTEnhanceLib.volume import Volume

        from .tasks import EnhanceRequest, run_requests

        record = json.loads((folder / "task.json").read_text())
        volume = Volume(np.load(folder / "input.npy", allow_pickle=False), record["spacing"], record["origin"],
                        record["direction"])
        requests = [EnhanceRequest(r["method"], model=r["model"], device=r["device"], options=r["options"],
                                   factor=r["factor"], axis=r["axis"]) for r in record["requests"]]
        progress = _ProgressFile(folder / "progress.txt")
        results = run_requests(volume, requests, progress)
        for index, result in enumerate(results):
            np.save(folder / f"result-{index}.npy", result.volume.array)
            for name, extra in result.extras.items():
                np.save(folder / f"result-{index}-{name}.npy", extra.array)
            geometry = {"spacing": result.volume.spacing.tolist(), "origin": result.volume.origin.tolist(),
                        "direction": result.volume.direction.tolist()}
            (folder / f"result-{index}.json").write_text(json.dumps(
                {"geometry": geometry, "extras": sorted(result.extras), "info": result.info}, default=str))
        (folder / "done.json").write_text("{}")
        return 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one sentence
        bad_input = bool(IQTError) and isinstance(exc, IQTError)
        message = str(exc) if bad_input else f"{type(exc).__name__}: {exc}"
        try:
            (folder / "error.json").write_text(json.dumps(
                {"message": message, "traceback": traceback.format_exc(), "input_error": bad_input}))
        except OSError:
            pass
        return 2 if bad_input else 1


def serve() -> None:
    """The worker's main loop: import the engine once, then run each task folder read from stdin;
    end when stdin closes (the parent ended or killed us)."""
    try:   # warm: what a task needs, before the first one arrives
        import IQTEnhanceLib.api  # noqa: F401

        from . import tasks  # noqa: F401
        if module_available("torch"):
            import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - the task reports any import problem with its traceback
        pass
    for line in sys.stdin:
        folder = Path(line.strip())
        if not line.strip() or not folder.is_dir():
            continue
        out_fd = os.open(folder / "output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        saved = os.dup(1), os.dup(2)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        try:
            code = run_worker(folder)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (out_fd, *saved):
                os.close(fd)
        (folder / "finished").write_text(str(code))


if __name__ == "__main__":
    if len(sys.argv) > 1:      # one task, then exit (for debugging a task folder by hand)
        sys.exit(run_worker(sys.argv[1]))
    serve()
