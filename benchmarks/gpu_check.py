"""The prepared GPU check: predlat's GPU dataset in one run of a few minutes.

On one GPU, with the torch device (one CUDA stream and CUDA graphs per slot):

1. profile the paper's six models at full size alone (batch 1, 2, 4, 8);
2. collect co-location traces: K = 2, 3, 4 batches at once, batch sizes 1..8, Poisson
   arrivals at three loads, over the paper's model sets (all six, and its two halves),
   plus the solo and co-location noise floors;
3. evaluate every predictor on them (the study), and run a quick scheduling comparison;
4. write at most eight files into one folder: the study folder that
   `predlat study --traces DIR` re-evaluates on any machine (profile.json, floors.json,
   traces.tar), both reports and results.json files, and summary.json (the GPU, the
   slowdown range per model pair, the copy phases' share of latency, timings).

    python benchmarks/gpu_check.py --out results/gpu-h200
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-dry   # CPU, small models

`--dry-run` runs the same steps on the torch CPU device with three zoo models and
one-second traces, so the script is checked end to end where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from predlat.cli import main as predlat_main
from predlat.devices.factory import describe_device
from predlat.experiments.study import run_study
from predlat.experiments.study_config import study_config
from predlat.experiments.study_data import load_study_dir, pack_traces
from predlat.models import resolve_models
from predlat.profiling.profile import Profile
from predlat.traces.records import BatchRecord

FULL_SIZE = ("resnet50", "yolov8n", "roberta_base", "vit_b_16", "vgg19", "convnext_base")
DRY_RUN_MODELS = ("tiny", "roberta", "convnext")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = args.device or ("torch-cpu" if args.dry_run else "torch-cuda")
    models = tuple(args.models.split(",")) if args.models else _default_models(args.dry_run)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    info = describe_device(device)
    _log(f"device {device}: {info}")
    resolve_models(list(models))  # a missing package or unknown name fails now

    with tempfile.TemporaryDirectory(prefix="predlat-gpu-check-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        study_dir = work / "study"
        config = _study_config(models, device, info, args)
        _log(f"study: {len(config.grid)} traces of {args.trace_s:g} s, K = 2, 3, 4")
        run_study(config, study_dir, progress=not args.no_progress)
        timings["study_s"] = time.perf_counter() - t

        t = time.perf_counter()
        compare_dir = work / "compare"
        if not args.skip_compare:
            _log("quick compare")
            _compare(device, models, compare_dir, args)
        timings["compare_s"] = time.perf_counter() - t

        data = load_study_dir(study_dir)
        timings["total_s"] = time.perf_counter() - started
        summary = _summary(device, info, models, data.profile, data.traces, timings)
        _pack(study_dir, compare_dir, out, summary)
    _log(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
    _log(f"re-evaluate anywhere: predlat study --traces {out} --out DIR")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the dataset")
    parser.add_argument("--device", default=None, help="make_device name (default torch-cuda)")
    parser.add_argument("--models", default=None, help="comma-separated (default: the six)")
    parser.add_argument("--trace-s", type=float, default=None, help="seconds per trace")
    parser.add_argument("--dry-run", action="store_true", help="CPU, small models, short")
    parser.add_argument("--skip-compare", action="store_true", help="the study only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.trace_s is None:
        args.trace_s = 1.0 if args.dry_run else 6.0
    return args


def _default_models(dry_run: bool) -> tuple[str, ...]:
    return DRY_RUN_MODELS if dry_run else FULL_SIZE


def _study_config(models: tuple[str, ...], device: str, info: Any, args: argparse.Namespace) -> Any:
    """The study's full grid (every model set x load x K = 2, 3, 4 on an accelerator)
    with short traces: a GPU runs thousands of batches in a few seconds."""
    config = study_config(
        list(models), "full", cores=info.cores, threads=1, accelerator=info.accelerator
    )
    grid = tuple(replace(s, duration=args.trace_s) for s in config.grid)
    quick = args.dry_run
    return replace(
        config,
        grid=grid,
        device=device,
        profile_repeats=5 if quick else 20,
        noise_repeats=5 if quick else 30,
        colocation_batches=12 if quick else 40,
        colocation_repeats=3 if quick else 10,
    )


def _compare(device: str, models: tuple[str, ...], out: Path, args: argparse.Namespace) -> None:
    argv = ["compare", "--quick", "--device", device, "--models", ",".join(models)]
    argv += ["--slots", "2", "--out", str(out)]
    if args.dry_run:
        argv += ["--policies", "serial,coarse,predlat", "--train-duration", "3"]
    if args.no_progress:
        argv.append("--no-progress")
    code = predlat_main(argv)
    if code != 0:
        raise SystemExit(f"compare failed with status {code}")


# -- what the traces show ----------------------------------------------------------------
def pair_slowdowns(records: list[BatchRecord], profile: Profile) -> dict[str, dict[str, float]]:
    """Slowdown (latency / solo latency) of batches that ran beside exactly one other
    model for at least 90% of their life, per (model, co-runner model) pair."""
    pairs: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.latency <= 0 or not r.timeline:
            continue
        others = {o.model for o in r.timeline}
        covered = sum(o.duration for o in r.timeline)
        if len(r.timeline) != 1 or covered < 0.9 * r.latency:
            continue
        solo = profile.solo_latency(r.model, r.batch_size)
        pairs[f"{r.model}+{next(iter(others))}"].append(r.latency / solo)
    return {
        pair: {
            "batches": len(v),
            "min": float(np.min(v)),
            "p50": float(np.median(v)),
            "max": float(np.max(v)),
        }
        for pair, v in sorted(pairs.items())
    }


def copy_shares(records: list[BatchRecord]) -> dict[str, dict[str, float]]:
    """Per model: mean share of latency spent copying in and copying out."""
    shares: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r.phases is not None and r.latency > 0:
            copy_in, _, copy_out = r.phases
            shares[r.model].append((copy_in / r.latency, copy_out / r.latency))
    return {
        m: {
            "copy_in": float(np.mean([a for a, _ in v])),
            "copy_out": float(np.mean([b for _, b in v])),
        }
        for m, v in sorted(shares.items())
    }


def _summary(device, info, models, profile, traces, timings) -> dict[str, Any]:
    records = [r for t in traces for r in t.records]
    k2 = [r for t in traces if t.concurrency == 2 for r in t.records]
    return {
        "device": device,
        "device_info": {k: getattr(info, k) for k in ("kind", "accelerator", "cores", "detail")},
        "gpu": _gpu_name(),
        "python": platform.python_version(),
        "torch": _torch_version(),
        "models": list(models),
        "traces": len(traces),
        "batches": len(records),
        "pair_slowdowns_k2": pair_slowdowns(k2, profile),
        "copy_shares": copy_shares(records),
        "graphs": "captured per (slot, batch size)" if info.accelerator else "none (CPU)",
        "timings": timings,
    }


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no torch, no driver: the summary says "none"
        return None


def _torch_version() -> str | None:
    try:
        import torch

        return torch.__version__
    except ImportError:
        return None


# -- the dataset: at most eight files ----------------------------------------------------
def _pack(study: Path, compare: Path, out: Path, summary: dict[str, Any]) -> None:
    """profile.json, floors.json and traces.tar (a study folder), the study's and the
    comparison's report and results, and summary.json."""
    for name in ("profile.json", "floors.json"):
        shutil.copy(study / name, out / name)
    pack_traces(sorted((study / "traces").glob("*.parquet")), out / "traces.tar")
    shutil.copy(study / "report.md", out / "study_report.md")
    shutil.copy(study / "results.json", out / "study_results.json")
    if (compare / "results.json").is_file():
        shutil.copy(compare / "report.md", out / "compare_report.md")
        shutil.copy(compare / "results.json", out / "compare_results.json")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _log(text: str) -> None:
    print(f"[gpu_check] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
