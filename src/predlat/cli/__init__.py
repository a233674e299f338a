"""The `predlat` command. Each subcommand lives in its own module in this package,
exposing `register(subparsers)` (adds its parser, sets `func`) so that adding a command
never touches another's code."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from predlat import __version__
from predlat.errors import PredlatError

# Order shown in `predlat --help`.
COMMAND_MODULES = (
    "profile",
    "trace",
    "fit",
    "study",
    "compare",
    "calibrate",
    "simulate",
    "validate",
    "serve",
    "load",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predlat",
        description="Inference serving with predictable latency under co-location.",
    )
    parser.add_argument("--version", action="version", version=f"predlat {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"predlat.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"predlat.cli.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PredlatError as exc:
        print(f"predlat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"predlat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
