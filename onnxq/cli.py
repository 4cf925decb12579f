"""``onnxq <verb>``: one module per verb under ``onnxq/commands``, listed in COMMANDS.

Each command module defines ``register(subparsers)`` (adding its parser, with ``func`` set to a
callable taking the parsed args and returning an exit code) and imports heavy libraries only
inside that callable, so ``onnxq report`` runs where onnxruntime and torch are absent.
Exit codes: 0 success, 1 a check failed, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from . import __version__
from .errors import OnnxqError

COMMANDS = ["quantize", "sensitivity", "check", "profiles", "demo", "export", "qat", "bench", "eval", "compare", "report"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention too)
        self.exit(2, f"onnxq: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnxq", description="Quantize ONNX models (PTQ and QAT) and measure which wins on your hardware.")
    parser.add_argument("--version", action="version", version=f"onnxq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"onnxq.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"onnxq.commands.{name}":
                continue  # verb not built yet
            raise
        mod.register(sub)
    return parser


def add_common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable result on stdout (logs go to stderr)")
    p.add_argument("-v", "--verbose", action="store_true", help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, fewer messages")


_NOTES: list[str] = []


def note(message: str) -> None:
    """A line for stderr printed when the command has finished: an error stays the only line a script reads."""
    _NOTES.append(message)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every temp file and folder is cleaned up on the way out."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _interrupted(e: KeyboardInterrupt, written: list) -> str:
    what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
    if not written:
        return f"onnxq: {what}; no output was written (temporary files removed)"
    names = [str(p) for p in dict.fromkeys(written)]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (f"onnxq: {what} after writing {len(names)} complete file(s): {shown}; nothing else was written "
            "(temporary files removed)")


def main(argv: list[str] | None = None) -> int:
    from ._fs import WRITTEN, os_error_line

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    del _NOTES[:]
    start = len(WRITTEN)
    old_term = None
    try:
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        code = int(args.func(args) or 0)
        for line in _NOTES:
            print(line, file=sys.stderr)
        return code
    except OnnxqError as e:
        print(f"onnxq: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a write that failed (read-only, full, too long a name...): one line, exit 2
        if isinstance(e, BrokenPipeError):  # e.g. `onnxq profiles | head`
            return 0
        print(f"onnxq: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(_interrupted(e, WRITTEN[start:]), file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
