"""The entry point of ``iqt-enhance``.
"""
from __future__ import annotations

import sys
import traceback

from IQTEnhanceApps.cli.parser import build_parser
from IQTEnhanceApps.common.files import Outputs
from IQTEnhanceApps.common.runtime import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    PROG,
    catch_interrupts,
    restore_interrupts,
)
from IQTEnhanceLib.errors import CancelledError, IQTError


def _os_error_line(exc: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` → ``x: no space left on device``."""
    if exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror[0].lower()}{exc.strerror[1:]}"
    return " ".join(str(exc).split())


# -- entry point --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to sys.exit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = catch_interrupts()
    outputs = Outputs()
    try:
        try:
            parser = build_parser(argv)
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, usage errors (argparse prints them)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_INPUT)
        args._outputs = outputs
        try:
            code = args.func(args)
        except BaseException:
            outputs.discard()
            raise
        return 0 if code is None else int(code)
    except (CancelledError, KeyboardInterrupt):
        print(f"{PROG}: interrupted; no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except IQTError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        print(f"{PROG}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{PROG}: error: out of memory; crop or split the volume, use a method with a smaller "
              "footprint, or free memory (no output written)", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(f"{PROG}: internal error (a bug): please report the traceback above", file=sys.stderr)
        return 1
    finally:
        restore_interrupts(previous)

