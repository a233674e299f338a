"""`predlat study`: the end-to-end predictor study on this machine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from predlat.cli.common import (
    add_device_option,
    add_models_option,
    add_progress_option,
    add_seed_option,
    chosen_models,
    name_list,
    require_out_folder,
)
from predlat.errors import ConfigError, require

if TYPE_CHECKING:
    from predlat.experiments.study_results import StudyResults


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="compare latency predictors on traces collected here (report + plots)",
        description=(
            "Profile the models, measure the solo and co-location noise floors "
            "(leave-one-out), collect co-location traces over a grid of model sets, loads "
            "and concurrency K (mostly in the spatial regime: K x threads <= cores), fit "
            "every predictor per regime on the first 75% of each trace and evaluate it on "
            "the rest (forecast and posterior mode, and on unseen configurations), and "
            "measure recovery after shifts of one factor at a time. Writes DIR/report.md, "
            "DIR/results.json, PNG plots, DIR/profile.json, DIR/floors.json and "
            "DIR/traces/. With --traces, evaluates a folder recorded earlier (on any "
            "device) without running one."
        ),
    )
    add_models_option(parser)
    add_device_option(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a reduced grid with short traces (a few minutes on 2 cores)",
    )
    parser.add_argument(
        "--predictors",
        type=name_list,
        default=None,
        help="comma-separated predictor names (default: all)",
    )
    add_seed_option(parser)
    parser.add_argument(
        "--traces",
        type=Path,
        default=None,
        metavar="DIR",
        help="evaluate recorded traces instead of measuring: DIR holds profile.json, "
        "traces/*.parquet (or *.parquet) and optionally floors.json, as a study writes them",
    )
    parser.add_argument(
        "--reuse-traces",
        action="store_true",
        help="reuse DIR/traces/*.parquet collected by an earlier run with the same settings",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/study"), help="output folder (default: runs/study)"
    )
    add_progress_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_out_folder(args.out)
    if args.predictors is not None:
        _check_predictors(args.predictors)
    # Imported here so `predlat --help` stays fast.
    from rich.console import Console

    if args.traces is not None:
        return _run_on_traces(args)
    from dataclasses import replace

    from predlat.experiments.study import run_study
    from predlat.experiments.study_config import study_config
    from predlat.models import resolve_models

    names = chosen_models(args)
    require(len(set(names)) == len(names), "--models lists a model twice")
    specs = resolve_models(names)  # bad names fail now, not after minutes of work
    sources = {spec.name: given for spec, given in zip(specs, names, strict=True)}
    from predlat.devices.factory import describe_device

    info = describe_device(args.device)
    config = study_config(
        [s.name for s in specs],
        "quick" if args.quick else "full",
        args.seed,
        sources,
        cores=info.cores or os.cpu_count() or 1,
        accelerator=info.accelerator,
    )
    config = replace(config, device=args.device)
    if args.predictors is not None:
        evaluation = replace(config.evaluation, predictors=tuple(args.predictors))
        config = replace(config, evaluation=evaluation)
    run = run_study(config, args.out, progress=not args.no_progress, reuse_traces=args.reuse_traces)
    Console(stderr=True).print(
        f"wrote {args.out / 'report.md'}, {args.out / 'results.json'} and plots in "
        f"{run.results.timings['total_s']:.0f} s"
    )
    print(summary_text(run.results))
    return 0


def _run_on_traces(args: argparse.Namespace) -> int:
    from rich.console import Console

    from predlat.experiments.study import study_from_traces
    from predlat.experiments.study_config import EvalConfig

    require(not args.quick, "--quick selects a grid to measure; --traces evaluates a folder")
    require(not args.reuse_traces, "--reuse-traces applies to measuring, not to --traces")
    evaluation = EvalConfig() if args.predictors is None else EvalConfig(tuple(args.predictors))
    run = study_from_traces(args.traces, args.out, evaluation)
    Console(stderr=True).print(f"wrote {args.out / 'report.md'} and {args.out / 'results.json'}")
    print(summary_text(run.results))
    return 0


def _check_predictors(names: list[str]) -> None:
    """Unknown names fail now, not after minutes of trace collection."""
    from predlat.predict.predictors import predictor_class

    if len(set(names)) != len(names):
        raise ConfigError("--predictors lists a predictor twice")
    for name in names:
        predictor_class(name)


def summary_text(results: StudyResults) -> str:
    """Per regime, each predictor's forecast-mode error in- and out-of-distribution,
    beside the floors; then the shift recoveries."""
    from predlat.experiments.report import pct

    lines = []
    for name, regime in results.regimes.items():
        e = regime.evaluation
        lines.append(f"{name} regime (K = {', '.join(map(str, regime.ks))}):")
        lines.append(f"  {'predictor':<24}{'mean':>8}{'p95':>8}{'unseen':>8}")
        for n in sorted(e.predictors, key=lambda n: e.predictors[n].mean_rel_err):
            s, u = e.predictors[n], e.unseen.get(n)
            unseen = pct(u.mean_rel_err) if u is not None and u.batches else "-"
            lines.append(f"  {n:<24}{pct(s.mean_rel_err):>8}{pct(s.p95):>8}{unseen:>8}")
        if regime.colocation_floor is not None:
            lines.append(
                f"  {'co-location floor':<24}{pct(regime.colocation_floor.mean_rel_err):>8}"
            )
    if results.noise_floor is not None:
        lines.append(f"solo noise floor {pct(results.noise_floor.mean_rel_err)}")
    for factor, shift in results.shifts.items():
        shown = ", ".join(
            f"{n} {'never' if s.recovery_batches is None else s.recovery_batches}"
            for n, s in shift.predictors.items()
            if s.online
        )
        lines.append(f"shift in {factor} ({shift.before.name} -> {shift.after.name}): {shown}")
    return "\n".join(lines)
