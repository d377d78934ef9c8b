"""Progress reporting and cooperative cancellation for long engine calls.

Every long call takes ``progress`` (a callable ``progress(fraction, message)`` with fraction in
[0, 1], or None) and ``cancel`` (a callable returning True when the caller wants to stop, or
None).  The engine calls them between batches; it knows nothing about threads or widgets.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from .errors import CancelledError

ProgressCallback = Optional[Callable[[float, str], None]]
CancelCheck = Optional[Callable[[], bool]]


class Reporter:
    """Maps a sub-task's own 0..1 progress into a slice [start, stop] of the caller's progress,
    checks for cancellation, and rate-limits calls (at most every ``min_interval`` seconds)."""

    def __init__(self, progress: ProgressCallback = None, cancel: CancelCheck = None,
                 start: float = 0.0, stop: float = 1.0, stage: str = "", min_interval: float = 0.05):
        self.progress = progress
        self.cancel = cancel
        self.start = start
        self.stop = stop
        self.stage = stage
        self.min_interval = min_interval
        self._last = 0.0

    def __call__(self, fraction: float, message: str = "", force: bool = False) -> None:
        self.check_cancel()
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and fraction < 1.0 and now - self._last < self.min_interval:
            return
        self._last = now
        fraction = min(max(float(fraction), 0.0), 1.0)
        text = message or self.stage
        self.progress(self.start + (self.stop - self.start) * fraction, text)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise CancelledError("cancelled by the user")

    def sub(self, start: float, stop: float, stage: str = "") -> "Reporter":
        """A reporter for a part of this task covering [start, stop] of it."""
        span = self.stop - self.start
        return Reporter(self.progress, self.cancel, self.start + span * start,
                        self.start + span * stop, stage or self.stage, self.min_interval)


def as_reporter(progress: ProgressCallback | Reporter = None, cancel: CancelCheck = None,
                stage: str = "") -> Reporter:
    if isinstance(progress, Reporter):
        return progress
    return Reporter(progress, cancel, stage=stage)
