"""`predlat trace`: collect a co-location trace on this machine and write it as Parquet."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from predlat.cli.common import (
    add_device_option,
    add_models_option,
    add_progress_option,
    add_seed_option,
    chosen_models,
    int_list,
    positive_float,
)
from predlat.errors import ConfigError, require

DEFAULT_PROFILE_SIZES = [1, 2, 4, 8]
DEFAULT_PROFILE_REPEATS = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trace",
        help="collect a co-location trace (finished batches with their timelines)",
        description=(
            "Run an open-loop workload on the real device: Poisson arrivals per model at "
            "LOAD x the device's capacity, per-model queues, up to K batches at once with "
            "random batch sizes 1..MAX_BATCH. Capacity is the request rate that would keep "
            "min(K, cores) slots busy running batches of 4 alone at their profiled speed. "
            "Writes one Parquet row per finished batch with its co-location timeline."
        ),
    )
    add_models_option(parser)
    parser.add_argument(
        "--concurrency", "-k", type=int, default=2, help="batches at once, K (default: 2)"
    )
    parser.add_argument(
        "--load",
        type=positive_float,
        default=0.5,
        help="arrival rate as a fraction of device capacity (default: 0.5)",
    )
    parser.add_argument(
        "--duration", type=positive_float, default=30.0, help="seconds of arrivals (default: 30)"
    )
    add_seed_option(parser)
    parser.add_argument(
        "--max-batch", type=int, default=8, help="largest batch size drawn (default: 8)"
    )
    parser.add_argument(
        "--profile-batch-sizes",
        type=int_list,
        default=DEFAULT_PROFILE_SIZES,
        help="batch sizes to profile if no cached profile matches (default: 1,2,4,8)",
    )
    parser.add_argument(
        "--profile-repeats",
        type=int,
        default=DEFAULT_PROFILE_REPEATS,
        help="timed solo runs per (model, batch size) when profiling (default: 20)",
    )
    add_device_option(parser)
    parser.add_argument(
        "--out", type=Path, default=Path("trace.parquet"), help="output Parquet file"
    )
    add_progress_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require(args.concurrency >= 1, f"--concurrency must be at least 1, got {args.concurrency}")
    require(args.max_batch >= 1, f"--max-batch must be at least 1, got {args.max_batch}")
    require(args.profile_repeats >= 3, "--profile-repeats must be at least 3")
    if args.out.exists() and args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder; give a .parquet file name")

    # Imported here so `predlat --help` stays fast.
    from rich.console import Console

    from predlat.devices.factory import make_device
    from predlat.models import resolve_models
    from predlat.profiling.profiler import load_or_profile
    from predlat.traces.collect import CollectConfig, collect, summarize
    from predlat.traces.trace_file import write_trace

    names = chosen_models(args)
    config = CollectConfig(args.concurrency, args.load, args.duration, args.seed, args.max_batch)
    config.validate()
    progress = not args.no_progress
    specs = resolve_models(names)
    profile = load_or_profile(
        specs,
        args.profile_batch_sizes,
        args.profile_repeats,
        device=args.device,
        progress=progress,
    )
    device = make_device(args.device, slots=args.concurrency, threads=1)
    started = time.perf_counter()
    try:
        result = collect(device, specs, profile, config, progress=progress)
    finally:
        device.close()
    path = write_trace(args.out, result.records, result.metadata(profile))
    summary = summarize(result.records, profile)
    console = Console()
    console.print(
        f"wrote {path}: {summary.batches} batches "
        f"({', '.join(f'{m} {n}' for m, n in summary.per_model.items())}) in "
        f"{time.perf_counter() - started:.1f} s\n"
        f"requests {result.requests} at {sum(result.rates.values()):.1f}/s "
        f"(capacity {result.capacity_rps:.1f}/s), served {result.served}, "
        f"dropped at the end {result.dropped}\n"
        f"mean batch size {summary.mean_batch_size:.2f}, mean concurrency "
        f"{summary.mean_concurrency:.2f} (busy {summary.busy_frac:.0%} of the time), "
        f"{summary.overlapped_frac:.0%} of batches overlapped, mean slowdown "
        f"{summary.mean_slowdown:.2f}x solo"
    )
    foreign = result.extra.get("foreign_cpu_frac")
    if foreign is not None:
        console.print(
            f"other processes used {foreign:.0%} of the machine's CPU meanwhile "
            "(interference the trace cannot attribute to a co-runner)"
        )
    return 0
