"""`predlat fit`: fit a latency predictor on trace files and save it for compare/serve."""

from __future__ import annotations

import argparse
from pathlib import Path

from predlat.cli.common import add_device_option, add_progress_option, name_list
from predlat.errors import ConfigError, require


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="fit a latency predictor on trace files and save it",
        description=(
            "Fit a predictor on finished batches from `predlat trace` files and write its "
            "state (versioned JSON, tied to the solo profile it was fitted against). "
            "`predlat compare --predictor FILE` and `predlat serve --predictor FILE` start "
            "from it and keep learning online. Predictor features are relative to the "
            "whole profile: fit against the models you will serve (--models)."
        ),
    )
    parser.add_argument(
        "--traces",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE_OR_DIR",
        help="trace files, or folders of them (*.parquet)",
    )
    parser.add_argument(
        "--predictor", default="fine-rls", help="predictor name (default: fine-rls)"
    )
    parser.add_argument(
        "--models",
        type=name_list,
        default=None,
        help="models of the profile (default: those the traces name)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads per slot the traces ran with (default: from the traces, or 1)",
    )
    add_device_option(parser)
    parser.add_argument("--out", type=Path, required=True, help="output file (JSON)")
    add_progress_option(parser)
    parser.set_defaults(func=run)


def trace_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.parquet"))
            require(bool(found), f"--traces {path}: no .parquet files in this folder")
            files += found
        else:
            require(path.is_file(), f"--traces {path}: no such file or folder")
            files.append(path)
    return files


def run(args: argparse.Namespace) -> int:
    if args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder; give a file name")
    require(args.threads is None or args.threads >= 1, "--threads must be at least 1")

    # Imported here so `predlat --help` stays fast.
    from predlat.experiments.compare_runs import concatenate
    from predlat.models import resolve_models
    from predlat.predict.persist import save_predictor
    from predlat.predict.predictors import make_predictor
    from predlat.profiling.profiler import load_or_profile
    from predlat.runtime.build import BATCH_SIZES, REPEATS
    from predlat.traces.trace_file import read_trace

    traces = [read_trace(p) for p in trace_files(args.traces)]
    records = concatenate([t.records for t in traces])
    require(bool(records), "the traces hold no finished batches")
    names = args.models or sorted({r.model for r in records})
    threads = args.threads or _trace_threads(traces)
    profile = load_or_profile(
        resolve_models(names),
        BATCH_SIZES,
        REPEATS,
        intra_op_threads=threads,
        device=args.device,
        progress=not args.no_progress,
    )
    unknown = sorted({r.model for r in records} - set(profile.models))
    require(not unknown, f"the traces run models outside --models: {', '.join(unknown)}")
    predictor = make_predictor(args.predictor, profile).fit(records)
    path = save_predictor(predictor, profile, args.out)
    print(
        f"wrote {path}: {predictor.name} fitted on {len(records)} batches from "
        f"{len(traces)} trace(s); profile of {', '.join(profile.models)} "
        f"({threads} intra-op thread(s))"
    )
    return 0


def _trace_threads(traces) -> int:
    found = {
        t.metadata.get("machine", {}).get("intra_op_threads")
        for t in traces
        if t.metadata.get("machine")
    } - {None}
    if len(found) > 1:
        raise ConfigError(
            f"the traces ran with different thread counts ({sorted(found)}); fit them apart"
        )
    return found.pop() if found else 1
