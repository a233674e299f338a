"""`predlat validate`: the calibrated simulator against the real device, same workload."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from predlat.cli.common import (
    add_device_options,
    add_progress_option,
    name_list,
    require_out_folder,
)
from predlat.cli.compare import float_list
from predlat.errors import require


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check the simulator against the real device on the same workload",
        description=(
            "Run `predlat compare` on the real device, calibrate a simulated device from "
            "its warm-up history (as `predlat calibrate`), and run the same comparison "
            "(same seeded arrivals, deadlines, priorities, policies and starting "
            "predictors) on the simulated device. Writes DIR/report.md (deadline "
            "satisfaction, p50/p99 latency and SLO capacity per policy, simulated against "
            "real), DIR/results.json, DIR/validate.png, the calibrated DIR/device.json "
            "and each side's full compare report in DIR/real and DIR/simulated."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="two small models (roberta, resnet), three loads, one seed, short runs: "
        "about two minutes",
    )
    parser.add_argument(
        "--models", type=name_list, default=None, help="comma-separated zoo names or .onnx paths"
    )
    parser.add_argument(
        "--policies",
        type=name_list,
        default=None,
        help="comma-separated (default: serial,serial-1t,oblivious,coarse,predlat)",
    )
    parser.add_argument(
        "--loads", type=float_list, default=None, help="sweep loads, fractions of capacity"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds of arrivals per run")
    parser.add_argument("--slots", type=int, default=None, help="device slots")
    add_device_options(parser, "intra-op threads per slot")
    parser.add_argument(
        "--train-duration",
        type=float,
        default=None,
        help="seconds of warm-up history: the predictors' and the calibration's data",
    )
    parser.add_argument("--repeats", type=int, default=None, help="seeds per load")
    parser.add_argument("--bisect-steps", type=int, default=None)
    parser.add_argument("--hp-frac", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--measured-tail",
        action="store_true",
        help="draw the simulated noise and hand-offs from tables measured on the probe run"
        " (device.json version 3) instead of a log-normal and medians",
    )
    parser.add_argument(
        "--host-cpu",
        action="store_true",
        help="the simulated batches lose the runtime's own CPU per batch, measured on the"
        " probe run, while they fill the cores (device.json version 4)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/validate"), help="output folder")
    add_progress_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require(args.slots is None or args.slots >= 1, f"--slots must be at least 1, got {args.slots}")
    require(args.threads >= 1, f"--threads must be at least 1, got {args.threads}")
    require(args.duration is None or args.duration > 0, "--duration must be positive")
    require(
        args.train_duration is None or args.train_duration > 0,
        "--train-duration must be positive (the calibration needs the warm-up history)",
    )
    require(args.seed >= 0, f"--seed must be non-negative, got {args.seed}")
    require_out_folder(args.out)  # now, not after minutes on the device
    from predlat.experiments.compare import CompareConfig
    from predlat.experiments.validate import quick_validate_config, run_validate
    from predlat.experiments.validate_report import write_validate_outputs

    config = quick_validate_config() if args.quick else CompareConfig()
    given = {
        "models": tuple(args.models) if args.models else None,
        "policies": tuple(args.policies) if args.policies else None,
        "loads": tuple(args.loads) if args.loads else None,
        "duration_s": args.duration,
        "slots": args.slots,
        "train_s": args.train_duration,
        "repeats": args.repeats,
        "bisect_steps": args.bisect_steps,
        "hp_frac": args.hp_frac,
    }
    config = replace(
        config,
        device=args.device,
        threads=args.threads,
        seed=args.seed,
        **{k: v for k, v in given.items() if v is not None},
    )
    results = run_validate(
        config,
        None if args.no_progress else _note(),
        measured_tail=args.measured_tail,
        host_cpu=args.host_cpu,
    )
    paths = write_validate_outputs(results, args.out)
    for p, d in results["differences"]["by_policy"].items():
        print(
            f"{p:<10} all met {_pp(d['max_abs_d_met_frac_pp'])}, high priority "
            f"{_pp(d['max_abs_d_hp_met_pp'])}, p99 {_pct(d['max_abs_d_p99_ms_pct'])} "
            f"(largest over loads); SLO capacity {_pct(d['d_capacity_pct'])}"
        )
    print(f"wrote {paths['report']}")
    return 0


def _note():
    t0 = time.perf_counter()

    def note(what: str, frac: float) -> None:
        print(
            f"validate {100 * frac:3.0f}% {time.perf_counter() - t0:5.0f} s  {what}",
            file=sys.stderr,
            flush=True,
        )

    return note


def _pp(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} pp"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0f}%"
