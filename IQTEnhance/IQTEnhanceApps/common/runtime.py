"""The command line's runtime: its name and exit codes, Ctrl-C as the engine's cancel check, the
progress bar, lines for the user, and the process's peak memory.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Optional

from IQTEnhanceLib.errors import CancelledError

PROG = "iqt-enhance"
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


# -- progress and Ctrl-C ------------------------------------------------------------------------------
_INTERRUPTED = False


def cancel_requested() -> bool:
    """True once the user pressed Ctrl-C: the engine's cancel check (it stops between batches)."""
    return _INTERRUPTED


def check_cancel() -> None:
    if _INTERRUPTED:
        raise CancelledError("interrupted")


def _on_sigint(signum, frame):
    global _INTERRUPTED
    _INTERRUPTED = True
    # a second Ctrl-C stops at once (Python's KeyboardInterrupt); outputs are still cleaned up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"\n{PROG}: interrupting (press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)


def catch_interrupts():
    """Start a command: forget an earlier Ctrl-C and make the next one a cancel request.  Returns
    the previous SIGINT handler (None where signals cannot be installed: not the main thread)."""
    global _INTERRUPTED
    _INTERRUPTED = False
    with contextlib.suppress(ValueError):  # only the main thread may install signal handlers
        return signal.signal(signal.SIGINT, _on_sigint)
    return None


def restore_interrupts(previous) -> None:
    if previous is not None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, previous)


class Progress:
    """The engine's ``progress(fraction, message)`` callback: a tqdm bar on a terminal, one log line
    per 10% step otherwise (CI logs), nothing with ``--quiet``."""

    def __init__(self, mode: str = "auto", label: str = ""):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.label = label
        self.bar = None
        self.last_step = -1

    def __call__(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self.mode == "bar":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=1000, file=sys.stderr, leave=False, dynamic_ncols=True,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
            self.bar.set_description_str(message or self.label, refresh=False)
            self.bar.update(int(round(fraction * 1000)) - self.bar.n)
        elif self.mode == "log":
            step = int(fraction * 10 + 1e-9)
            if step != self.last_step:
                self.last_step = step
                print(f"{PROG}: {100 * step // 10:3d}% {message or self.label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_for(args, label: str = "") -> Progress:
    return Progress("none" if getattr(args, "quiet", False) else "auto", label)


def info(args, message: str) -> None:
    """A line for the user on stdout (results, notes)."""
    print(message, flush=True)


# -- peak memory ------------------------------------------------------------------------------------
def peak_rss_reset() -> bool:
    """Reset this process's peak resident memory (Linux: /proc/self/clear_refs), so that each run's
    peak can be read after it; False where the system cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> Optional[float]:
    """This process's peak resident memory since start or the last :func:`peak_rss_reset` (VmHWM;
    getrusage's ru_maxrss of a child started by fork + exec still carries the parent's peak on
    Linux), in MB; None where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
