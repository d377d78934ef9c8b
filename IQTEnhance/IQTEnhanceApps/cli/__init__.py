"""The ``iqt-enhance`` command line: simulate, enhance, evaluate, train, fetch-data, models, demo,
batch and benchmark.

Every command is a thin shell around the engine: it reads files, calls one engine function with a
progress callback and a cancel check, and writes the results atomically with a JSON sidecar.

Exit codes: 0 success; 2 bad input or usage (one line ``iqt-enhance: error: ...`` on stderr);
1 an operating-system error (disk full, permission) or a bug (a traceback is printed);
130 interrupted (Ctrl-C).  A failed or interrupted command leaves no output file behind: volumes
and sidecars are written atomically and the ones a failing command already wrote are removed.

A command is added by giving :data:`.parser.COMMANDS` its ``register(subparsers, request)``, which
adds the sub-parser with ``set_defaults(func=...)``; ``func(args)`` returns the exit code.
"""
from .main import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
