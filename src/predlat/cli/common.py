"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse

from predlat.errors import ConfigError


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got '{text}'"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return values


def name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return value


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# -- options several commands share, spelled and documented once ---------------------------
DEFAULT_PROVIDER = "CPUExecutionProvider"


def add_models_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        type=name_list,
        default=None,
        help="comma-separated zoo names or .onnx paths (default: the six zoo models)",
    )


def add_device_options(parser: argparse.ArgumentParser, threads_help: str) -> None:
    """--threads (intra-op threads per slot) and --provider (ONNX Runtime provider)."""
    parser.add_argument("--threads", type=int, default=1, help=f"{threads_help} (default: 1)")
    add_provider_option(parser)


def add_provider_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--provider",
        default=DEFAULT_PROVIDER,
        help=f"ONNX Runtime execution provider (default: {DEFAULT_PROVIDER})",
    )


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
