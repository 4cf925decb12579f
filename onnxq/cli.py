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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except OnnxqError as e:
        print(f"onnxq: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # e.g. `onnxq profiles | head`
        return 0
    except KeyboardInterrupt:
        print("onnxq: interrupted; no output was written", file=sys.stderr)
        return 130
