"""Command-line entry point. Every command is registered in ``COMMANDS`` below."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from ensemble import __version__
from ensemble.backends import use_backend
from ensemble.errors import EnsembleError

# Module names under ensemble.cli, in the order the pipeline runs: data -> ... -> submission.
COMMANDS: tuple[str, ...] = (
    "data", "baselines", "search", "worker", "proxy", "build", "report", "run", "status", "predict", "submission",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per registered module entry."""
    parser = argparse.ArgumentParser(
        prog="ensemble",
        description="Ensemble AutoML for Kaggle's Digit Recognizer: data, search, ensemble, report, submission.",
    )
    parser.add_argument("--version", action="version", version=f"ensemble {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"ensemble.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # JAX grabs 75% of GPU memory per process by default; trials run in child processes
    # beside this one, so every process allocates only what it uses.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    from ensemble.logs import show_progress

    show_progress()  # the stages' [mm:ss stage] lines on stdout
    if not args.debug:
        from ensemble.quiet import filter_native_logs

        filter_native_logs()  # TensorFlow's native start-up lines, here and in trial workers
    try:
        use_backend(getattr(args, "backend", None))  # every command, before Keras loads; children inherit it
        return int(args.func(args) or 0)
    except EnsembleError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_fit_to_print(str(exc), args)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # one line, no traceback (--debug: the traceback too)
        if args.debug:
            traceback.print_exc()
        print(interrupted_line(args.command, argv, str(exc)), file=sys.stderr)
        return 130


def _fit_to_print(message: str, args: argparse.Namespace) -> str:
    """``message`` with the storage URL's secrets masked wherever it quotes them, and control characters
    escaped (an error can quote what a shared storage holds: it must not drive the terminal)."""
    from ensemble.search.storage import STORAGE_ENV
    from ensemble.search.urls import hide_secrets

    message = hide_secrets(message, getattr(args, "storage", None) or os.environ.get(STORAGE_ENV))
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in message)


RESUMABLE = ("search", "baselines", "worker", "run", "build", "report")


def interrupted_line(command: str, argv: Sequence[str], what: str = "") -> str:
    """``interrupted: trial 3 will run again; resume with: ensemble search --run r ...`` (passwords hidden)."""
    import shlex

    line = f"interrupted: {what}" if what else "interrupted"
    if command not in RESUMABLE:
        return line
    again = [_hidden(a) for a in argv if a != "--restart"]  # resuming must not start the run over
    return f"{line}; resume with: ensemble {shlex.join(again)}"


def _hidden(arg: str) -> str:
    """One argument of a command line to print: a URL in it (``--storage=URL`` too) with its secrets masked."""
    from ensemble.search.urls import redact

    if "://" not in arg:
        return arg
    flag, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
    return f"{flag}{eq}{redact(value)}"
