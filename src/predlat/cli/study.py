"""`predlat study`: the end-to-end predictor study on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from predlat.cli.common import (
    add_device_option,
    add_models_option,
    add_progress_option,
    name_list,
    require,
)
from predlat.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="compare latency predictors on traces collected here (report + plots)",
        description=(
            "Profile the models, measure the noise floor, collect co-location traces over a "
            "grid of model sets, loads (low/medium/high) and concurrency (2, 3, 4), fit every "
            "predictor on the first 75% of each trace (pooled) and evaluate it on the rest, "
            "in forecast and posterior mode; then a shift experiment (new models at a new "
            "load). Writes DIR/report.md, DIR/results.json, PNG plots and the traces."
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
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
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
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")

    # Imported here so `predlat --help` stays fast.
    from dataclasses import replace

    from rich.console import Console

    from predlat.experiments.study import run_study, study_config
    from predlat.models import resolve_models

    if args.predictors is not None:
        _check_predictors(args.predictors)
    if args.models is None:
        from predlat.models.zoo import ZOO_NAMES

        names = list(ZOO_NAMES)
    else:
        names = args.models
    require(len(set(names)) == len(names), "--models lists a model twice")
    specs = resolve_models(names)  # bad names fail now, not after minutes of work
    sources = {spec.name: given for spec, given in zip(specs, names, strict=True)}
    config = study_config(
        [s.name for s in specs], "quick" if args.quick else "full", args.seed, sources
    )
    config = replace(config, device=args.device)
    if args.predictors is not None:
        config = replace(config, predictors=tuple(args.predictors))
    run = run_study(config, args.out, progress=not args.no_progress, reuse_traces=args.reuse_traces)
    Console(stderr=True).print(
        f"wrote {args.out / 'report.md'}, {args.out / 'results.json'} and plots in "
        f"{run.results['timings']['total_s']:.0f} s"
    )
    print(summary_text(run.results))
    return 0


def _check_predictors(names: list[str]) -> None:
    """Unknown names fail now, not after minutes of trace collection."""
    from predlat.predict.predictors import parse_name

    if len(set(names)) != len(names):
        raise ConfigError("--predictors lists a predictor twice")
    for name in names:
        if name != "solo":
            parse_name(name)


def summary_text(results: dict) -> str:
    """The comparison table and the target check, for the terminal."""
    from predlat.experiments.report import pct

    preds = results["predictors"]
    lines = [f"{'predictor':<22}{'mean':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'under':>8}{'>q95':>8}"]
    for name in sorted(
        preds, key=lambda n: (n.endswith("-posterior"), preds[n]["mean_rel_err"] or float("inf"))
    ):
        s = preds[name]
        lines.append(
            f"{name:<22}{pct(s['mean_rel_err']):>8}{pct(s['p50']):>8}{pct(s['p95']):>8}"
            f"{pct(s['p99']):>8}{pct(s['under_frac']):>8}{pct(s['q95_exceed_frac']):>8}"
        )
    floor = results["noise_floor"]
    lines.append(f"{'noise floor':<22}{pct(floor.get('mean_rel_err')):>8}")
    colocation = results.get("colocation_floor") or {}
    if colocation.get("per_k"):
        per_k = ", ".join(f"K={k} {pct(v)}" for k, v in colocation["per_k"].items())
        lines.append(
            f"{'co-location floor':<22}{pct(colocation.get('mean_rel_err')):>8}"
            f"{pct(colocation.get('p50')):>8}{pct(colocation.get('p95')):>8}"
            f"{pct(colocation.get('p99')):>8}  ({per_k})"
        )
    t = results["targets"]
    ratio_floor, ratio_coarse = t["fine_rls_over_noise_floor"], t["fine_rls_over_coarse"]
    lines.append(
        "fine-rls / noise floor = "
        + ("n/a" if ratio_floor is None else f"{ratio_floor:.2f} (target <= 1.5)")
        + "; fine-rls / coarse = "
        + ("n/a" if ratio_coarse is None else f"{ratio_coarse:.2f} (target <= 0.33)")
    )
    return "\n".join(lines)
