"""`predlat profile`: measure each model alone and write DIR/profile.json."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from predlat.cli.common import (
    add_device_options,
    add_models_option,
    add_progress_option,
    chosen_models,
    int_list,
    require_out_folder,
)
from predlat.errors import require
from predlat.profiling.profile import Profile

DEFAULT_BATCH_SIZES = [1, 2, 4, 8]
DEFAULT_REPEATS = 20
MIN_REPEATS = 3  # median, p99 and cv need a few samples to mean anything


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure each model alone: latency and resource features",
        description=(
            "Measure each (model, batch size) alone on one execution slot after warm-up: "
            "median, p99 and coefficient of variation of latency, FLOPs and bytes moved, "
            "and achieved throughput relative to this machine's measured peaks. Writes "
            "DIR/profile.json. Profiles are cached per machine and reused when the model "
            "file is unchanged."
        ),
    )
    add_models_option(parser)
    parser.add_argument(
        "--batch-sizes",
        type=int_list,
        default=DEFAULT_BATCH_SIZES,
        help="comma-separated batch sizes (default: 1,2,4,8)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"timed runs per model and batch size, at least {MIN_REPEATS} (default: 20)",
    )
    add_device_options(parser, "intra-op threads of the slot")
    parser.add_argument(
        "--force", action="store_true", help="measure again even if a cached profile matches"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/profile"),
        help="output folder for profile.json (default: runs/profile)",
    )
    add_progress_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require(
        args.repeats >= MIN_REPEATS, f"--repeats must be at least {MIN_REPEATS}, got {args.repeats}"
    )
    require(args.threads >= 1, f"--threads must be at least 1, got {args.threads}")
    require_out_folder(args.out)

    # Imported here so `predlat --help` stays fast.
    from predlat.models import resolve_models
    from predlat.profiling.profiler import load_or_profile

    names = chosen_models(args)
    started = time.perf_counter()
    specs = resolve_models(names)
    profile = load_or_profile(
        specs,
        args.batch_sizes,
        args.repeats,
        out_dir=args.out,
        intra_op_threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
        force=args.force,
    )
    elapsed = time.perf_counter() - started
    console = Console()
    if not console.is_terminal:  # a pipe or file: do not squeeze the table into 80 columns
        console = Console(width=120)
    console.print(profile_table(profile))
    peaks = profile.machine.peaks
    console.print(
        f"machine: {profile.machine.cpu}, {profile.machine.cores} cores, "
        f"{profile.machine.provider}, {profile.machine.intra_op_threads} thread(s) per slot\n"
        f"peaks per slot: GEMM {peaks['gemm_gflops_per_s']:.1f} GFLOP/s, "
        f"memory {peaks['mem_gbytes_per_s']:.1f} GB/s"
    )
    console.print(f"wrote {args.out / 'profile.json'} in {elapsed:.1f} s")
    return 0


def profile_table(profile: Profile) -> Table:
    table = Table(title="solo profile", box=box.SIMPLE_HEAD)
    for column in ("model", "batch", "median ms", "p99 ms", "cv", "GFLOP", "MB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_column("compute_util", justify="right")
    table.add_column("memory_util", justify="right")
    for model, entries in profile.models.items():
        for n, entry in sorted(entries.items()):
            f = entry.features
            table.add_row(
                model,
                str(n),
                f"{entry.latency.median * 1e3:.2f}",
                f"{entry.latency.p99 * 1e3:.2f}",
                f"{entry.latency.cv:.3f}",
                f"{f['flops'] / 1e9:.3f}",
                f"{f['bytes'] / 1e6:.1f}",
                f"{f['compute_util']:.2f}",
                f"{f['memory_util']:.2f}",
            )
    return table
