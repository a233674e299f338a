"""`predlat compare`: scheduling policies against the same workload on the real device."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from predlat.cli.common import (
    add_device_options,
    add_progress_option,
    add_quantile_option,
    add_seed_option,
    name_list,
    positive_float,
    require_out_folder,
)
from predlat.errors import require


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got '{text}'"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got '{text}'")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare scheduling policies on the real device (report + plots)",
        description=(
            "Replay the same seeded open-loop workloads (Poisson arrivals per model, deadlines "
            "as a multiple of each model's solo latency, a high-priority fraction) against "
            "each scheduling policy on this machine: a sweep of loads, then per policy a "
            "bisection for its SLO capacity (the highest load meeting >= 99% of "
            "high-priority and >= 95% of all deadlines). Writes DIR/report.md, "
            "DIR/results.json and PNG plots."
        ),
    )
    parser.add_argument(
        "--policies",
        type=name_list,
        default=None,
        help="comma-separated policies (default: serial,serial-1t,oblivious,coarse,predlat)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="three loads, one seed, one bisection step, short runs: about 3 minutes",
    )
    parser.add_argument(
        "--loads",
        type=float_list,
        default=None,
        help="comma-separated sweep loads, fractions of device capacity "
        "(default: 0.25,0.5,0.75,1; quick: 0.3,0.6,0.9)",
    )
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=None,
        help="seconds of arrivals per run (default: 6; quick: 4)",
    )
    parser.add_argument(
        "--models",
        type=name_list,
        default=None,
        help="comma-separated zoo names or .onnx paths (default: the zoo)",
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="device slots (default: cores / threads, the spatial regime; more slots "
        "give the oversubscribed one)",
    )
    add_device_options(parser, "intra-op threads per slot")
    deadline = parser.add_mutually_exclusive_group()
    deadline.add_argument(
        "--deadline-factor",
        type=positive_float,
        default=10.0,
        help="deadline as a multiple of solo latency at batch 1 (default: 10)",
    )
    deadline.add_argument(
        "--deadline-ms",
        type=positive_float,
        default=None,
        help="one deadline for every model, in ms",
    )
    parser.add_argument(
        "--hp-frac",
        type=float,
        default=0.3,
        help="fraction of high-priority requests (default: 0.3)",
    )
    parser.add_argument(
        "--arrivals",
        choices=("poisson", "bursty"),
        default="poisson",
        help="arrival process (default: poisson)",
    )
    add_quantile_option(parser, "every predictive policy")
    parser.add_argument(
        "--train-duration",
        type=float,
        default=None,
        help="seconds of warm-up history (mixed loads 0.3, 0.6, 0.9) the predictors are "
        "fitted on (default: 60; quick: 15)",
    )
    parser.add_argument(
        "--predictor",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a `predlat fit` file: the policy forecasting with its predictor starts from "
        "it instead of the warm-up history (repeatable)",
    )
    parser.add_argument(
        "--bisect-steps",
        type=int,
        default=None,
        help="bisection steps per policy and seed after the sweep (default: 2; quick: 1)",
    )
    parser.add_argument(
        "--high-reserve",
        type=int,
        default=1,
        help="slots low-priority work leaves free while high-priority requests arrive (default: 1)",
    )
    add_seed_option(parser)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="seeds per load and capacity search (SEED, SEED+1, ...); figures pool them "
        "with a standard error (default: 2; quick: 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/compare"),
        help="output folder (default: runs/compare)",
    )
    add_progress_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_out_folder(args.out)
    require(0.0 <= args.hp_frac <= 1.0, f"--hp-frac must be in [0, 1], got {args.hp_frac}")
    require(args.slots is None or args.slots >= 1, f"--slots must be at least 1, got {args.slots}")
    require(
        args.repeats is None or args.repeats >= 1,
        f"--repeats must be at least 1, got {args.repeats}",
    )
    require(args.seed >= 0, f"--seed must be non-negative, got {args.seed}")
    for path in args.predictor:
        require(path.is_file(), f"--predictor {path}: no such file")
    require(args.threads >= 1, f"--threads must be at least 1, got {args.threads}")
    require(
        args.train_duration is None or args.train_duration >= 0,
        f"--train-duration must be non-negative, got {args.train_duration}",
    )

    # Imported here so `predlat --help` stays fast.
    from dataclasses import replace

    from predlat.experiments.compare import CompareConfig, quick_config, run_compare
    from predlat.experiments.compare_report import write_outputs
    from predlat.scheduling.policies import parse_quantile

    config = quick_config() if args.quick else CompareConfig()
    overrides: dict = {
        "slots": args.slots,
        "threads": args.threads,
        "device": args.device,
        "hp_frac": args.hp_frac,
        "quantile": parse_quantile(args.quantile),
        "seed": args.seed,
        "predictor_files": tuple(str(p) for p in args.predictor),
        "high_reserve": args.high_reserve,
        "process": args.arrivals,
        "deadline_factor": args.deadline_factor,
        "deadline_ms": args.deadline_ms,
    }
    if args.policies:
        overrides["policies"] = tuple(args.policies)
    if args.loads:
        overrides["loads"] = tuple(args.loads)
    if args.duration:
        overrides["duration_s"] = args.duration
    if args.models:
        overrides["models"] = tuple(args.models)
    if args.train_duration is not None:
        overrides["train_s"] = args.train_duration
    if args.repeats is not None:
        overrides["repeats"] = args.repeats
    if args.bisect_steps is not None:
        overrides["bisect_steps"] = args.bisect_steps
    config = replace(config, **overrides)
    config.validate()

    with _progress(not args.no_progress) as note:
        results = run_compare(config, progress=note)
    paths = write_outputs(results, args.out)
    _print_summary(results)
    print(f"wrote {paths['report']}, {paths['results']} and plots in {args.out}")
    return 0


class _progress:
    """A rich progress bar fed by run_compare's (what, fraction) notes."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._task = None

    def __enter__(self):
        if not self.enabled:
            return lambda what, frac: None
        if not sys.stderr.isatty():  # a log, not a terminal: one line per step
            t0 = time.perf_counter()
            return lambda what, frac: print(
                f"compare {100 * frac:3.0f}% {time.perf_counter() - t0:5.0f} s  {what}",
                file=sys.stderr,
                flush=True,
            )
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]compare[/bold] {task.description:<24}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            transient=True,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("starting", total=1.0)

        def note(what: str, frac: float) -> None:
            self._bar.update(self._task, description=what, completed=frac)

        return note

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _print_summary(results: dict) -> None:
    from predlat.experiments.report import num

    print(f"SLO capacity (quantile {results['quantile']}, {results['regime']} regime):")
    for name, c in results["slo_capacity"].items():
        err = f" ± {num(c['stderr'], 1)}" if c.get("stderr") is not None else ""
        more = " (met the SLO at every load tried)" if c.get("censored") else ""
        print(f"  {name:<10} {num(c['rps'], 1):>7} req/s{err}{more}")
