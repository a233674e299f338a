"""`predlat compare`: scheduling policies against the same workload on the real device."""

from __future__ import annotations

import argparse
from pathlib import Path

from predlat.cli.common import (
    add_device_options,
    add_progress_option,
    name_list,
    positive_float,
    require,
)
from predlat.errors import ConfigError


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
            "Replay the same seeded open-loop workload (Poisson arrivals per model, deadlines "
            "as a multiple of each model's solo latency, a high-priority fraction) against "
            "each scheduling policy on this machine, over a sweep of loads. Writes "
            "DIR/report.md, DIR/results.json and PNG plots (deadline satisfaction and goodput "
            "against load)."
        ),
    )
    parser.add_argument(
        "--policies",
        type=name_list,
        default=None,
        help="comma-separated policies (default: serial,oblivious,coarse,predlat)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="three loads, short runs: a few minutes on 2 cores"
    )
    parser.add_argument(
        "--loads",
        type=float_list,
        default=None,
        help="comma-separated loads, fractions of device capacity "
        "(default: 0.3,0.5,0.7,0.9,1.1; quick: 0.4,0.7,1.0)",
    )
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=None,
        help="seconds of arrivals per run (default: 20; quick: 8)",
    )
    parser.add_argument(
        "--models",
        type=name_list,
        default=None,
        help="comma-separated zoo names or .onnx paths (default: the zoo)",
    )
    parser.add_argument("--slots", type=int, default=4, help="device slots (default: 4)")
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
    parser.add_argument(
        "--quantile",
        type=float,
        default=0.95,
        help="forecast quantile predlat plans with (default: 0.95)",
    )
    parser.add_argument(
        "--train-duration",
        type=float,
        default=None,
        help="seconds of training trace for fitted predictors (default: 10; quick: 5)",
    )
    parser.add_argument(
        "--high-reserve",
        type=int,
        default=1,
        help="slots low-priority work leaves free while high-priority requests arrive (default: 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per load and policy, with seeds SEED, SEED+1, ...; figures pool them "
        "(default: 1)",
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
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")
    require(0.0 <= args.hp_frac <= 1.0, f"--hp-frac must be in [0, 1], got {args.hp_frac}")
    require(0.0 < args.quantile < 1.0, f"--quantile must be in (0, 1), got {args.quantile}")
    require(args.slots >= 1, f"--slots must be at least 1, got {args.slots}")
    require(args.repeats >= 1, f"--repeats must be at least 1, got {args.repeats}")
    require(args.threads >= 1, f"--threads must be at least 1, got {args.threads}")
    require(
        args.train_duration is None or args.train_duration >= 0,
        f"--train-duration must be non-negative, got {args.train_duration}",
    )

    # Imported here so `predlat --help` stays fast.
    from dataclasses import replace

    from predlat.experiments.compare import CompareConfig, quick_config, run_compare
    from predlat.experiments.compare_report import write_outputs

    config = quick_config() if args.quick else CompareConfig()
    overrides: dict = {
        "slots": args.slots,
        "threads": args.threads,
        "device": args.device,
        "hp_frac": args.hp_frac,
        "quantile": args.quantile,
        "seed": args.seed,
        "repeats": args.repeats,
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
    from predlat.experiments.report import num, pct

    for key in sorted(results["loads"], key=float):
        for name, m in results["loads"][key]["policies"].items():
            print(
                f"load {key:>4}  {name:<10} hp_met {pct(m['hp_met']):>6}  lp_met "
                f"{pct(m['lp_met']):>6}  goodput {num(m['goodput_rps'], 1):>7}/s  "
                f"p99 {num(m['p99_ms'], 1):>7} ms  rejected {pct(m['rejected_frac']):>6}"
            )
