"""`predlat simulate`: scheduling policies on a simulated cluster (device.json or preset)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from predlat.cli.common import (
    add_quantile_option,
    name_list,
    positive_float,
    require_out_folder,
)
from predlat.cli.compare import float_list


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="compare scheduling policies on simulated devices (clusters, millions of requests)",
        description=(
            "Stream the same seeded workload through N simulated devices (device.json files "
            "from `predlat calibrate`, hand-written ones, or presets: gpu, cpu4), each with its "
            "own scheduler, behind a front dispatcher, once per policy and load. Writes "
            "DIR/report.md, DIR/results.json (the schema of `predlat compare`, plus wall time "
            "and simulated_requests_per_wall_s) and PNG plots."
        ),
    )
    parser.add_argument(
        "--device",
        type=name_list,
        default=["gpu"],
        help="comma-separated device.json files or presets, cycled over the devices (default: gpu)",
    )
    parser.add_argument("--devices", type=int, default=1, help="devices in the cluster")
    parser.add_argument("--requests", type=int, default=100_000, help="requests per run")
    parser.add_argument(
        "--policies",
        type=name_list,
        default=None,
        help="comma-separated (default: serial,oblivious,coarse,predlat,oracle)",
    )
    parser.add_argument(
        "--loads",
        type=float_list,
        default=None,
        help="fractions of cluster capacity (default: 0.5,0.7,0.9,1.1)",
    )
    parser.add_argument(
        "--route", default="predlat", help="round-robin, least-loaded or predlat (default)"
    )
    parser.add_argument(
        "--arrivals",
        default="poisson",
        help="poisson, bursty, or a CSV: (timestamp, model[, priority, "
        "deadline_ms]) or an Azure Functions invocations-per-minute trace",
    )
    parser.add_argument("--slots", type=int, default=None, help="slots per device")
    parser.add_argument("--deadline-factor", type=positive_float, default=10.0)
    parser.add_argument("--deadline-ms", type=positive_float, default=None)
    parser.add_argument("--hp-frac", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    add_quantile_option(parser, "every predictive policy")
    parser.add_argument(
        "--bisect-steps",
        type=int,
        default=4,
        help="SLO-capacity bisection runs per policy after the sweep (default: 4)",
    )
    parser.add_argument(
        "--keep-requests",
        action="store_true",
        help="also write every request's outcome to DIR/requests.csv",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes for the runs (default: every core this process may use; "
        "1: no workers); under --route round-robin each run is also split into that many "
        "shards of its devices. The results are the same whatever the number",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_out_folder(args.out)  # before the runs, not after them
    from predlat.devices.base import usable_cores
    from predlat.experiments.simulate import SimulateConfig, run_simulate
    from predlat.experiments.simulate_report import write_simulate_outputs
    from predlat.scheduling.policies import parse_quantile

    config = SimulateConfig(
        device=tuple(args.device),
        devices=args.devices,
        requests=args.requests,
        policies=tuple(args.policies) if args.policies else SimulateConfig.policies,
        loads=tuple(args.loads) if args.loads else SimulateConfig.loads,
        route=args.route,
        arrivals=args.arrivals,
        slots=args.slots,
        bisect_steps=args.bisect_steps,
        quantile=parse_quantile(args.quantile),
        deadline_factor=args.deadline_factor,
        deadline_ms=args.deadline_ms,
        hp_frac=args.hp_frac,
        seed=args.seed,
        keep_requests=args.keep_requests,
        jobs=usable_cores() if args.jobs is None else args.jobs,
    )

    def note(what: str, frac: float) -> None:
        print(f"\r[{frac:4.0%}] {what:<40}", end="", file=sys.stderr, flush=True)

    results = run_simulate(config, note)
    print(file=sys.stderr)
    paths = write_simulate_outputs(results, args.out)
    print(
        f"simulated {results['simulated_requests']} requests at "
        f"{results['simulated_requests_per_wall_s']:,.0f} per wall second "
        f"of one process (wall {results['wall_s']:.1f} s, {results['jobs']} job(s))"
    )
    print(f"wrote {paths['report']}")
    return 0
