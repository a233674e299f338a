"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

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


# -- options several commands share, spelled and documented once ---------------------------


def add_models_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        type=name_list,
        default=None,
        help="comma-separated zoo names or .onnx paths (default: the six zoo models)",
    )


def require_out_folder(out: Path | None) -> None:
    """--out names a folder to write into: refused up front if a file is in the way
    (None: no output asked for)."""
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")


def chosen_models(args: argparse.Namespace) -> list[str]:
    """The names --models gave (see add_models_option), or every zoo model."""
    if args.models is not None:
        return list(args.models)
    from predlat.models.zoo import ZOO_NAMES  # here: it imports onnx; --help stays fast

    return list(ZOO_NAMES)


def add_device_options(parser: argparse.ArgumentParser, threads_help: str) -> None:
    """--threads (intra-op threads per slot) and --device."""
    parser.add_argument("--threads", type=int, default=1, help=f"{threads_help} (default: 1)")
    add_device_option(parser)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """--device NAME, the one way every command picks a device (`make_device`); the old
    --provider (an ONNX Runtime provider name) still works and means the same option."""
    from predlat.devices.factory import DEFAULT_DEVICE, device_names

    parser.add_argument(
        "--device",
        "--provider",
        dest="device",
        default=DEFAULT_DEVICE,
        help=(
            f"device to run on: {', '.join(device_names())}, with a variant after a dash "
            f"(torch-cpu, torch-cuda, onnxruntime-cuda) (default: {DEFAULT_DEVICE}; "
            "--provider NAME: deprecated, an ONNX Runtime provider)"
        ),
    )


def add_quantile_option(parser: argparse.ArgumentParser, who: str) -> None:
    """--quantile Q|mean (parse it with scheduling.policies.parse_quantile)."""
    parser.add_argument(
        "--quantile",
        default="0.95",
        help=f"forecast quantile {who} plans with, or 'mean' (default: 0.95)",
    )


def add_seed_option(parser: argparse.ArgumentParser) -> None:
    """--seed, the seed of the workload a command draws."""
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
