"""`predlat load`: drive a v2 inference server with open-loop traffic and report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from predlat.cli.common import (
    add_progress_option,
    add_seed_option,
    name_list,
    positive_float,
    require_out_folder,
)
from predlat.errors import require


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "load",
        help="open-loop HTTP load generator for a v2 inference server",
        description=(
            "Send requests at the arrival times of a seeded Poisson or bursty process, "
            "whatever the server does (open loop), with random inputs shaped from each "
            "model's metadata. Reports achieved rate, latency percentiles, deadline "
            "satisfaction per priority (as the server judged it and as the client measured "
            "it) and errors by status; stops by itself after --duration (plus stragglers' "
            "--timeout-s at most)."
        ),
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument(
        "--rate", type=positive_float, default=100.0, help="requests/s in total (default: 100)"
    )
    parser.add_argument(
        "--duration", type=positive_float, default=10.0, help="seconds of arrivals (default: 10)"
    )
    parser.add_argument(
        "--arrivals", choices=("poisson", "bursty"), default="poisson", help="arrival process"
    )
    parser.add_argument(
        "--models", type=name_list, default=None, help="models to load (default: all served)"
    )
    parser.add_argument(
        "--deadline-ms",
        type=positive_float,
        default=None,
        help="deadline sent with every request (default: the server's per-model default)",
    )
    parser.add_argument(
        "--hp-frac", type=float, default=0.0, help="fraction of high-priority requests"
    )
    add_seed_option(parser)
    parser.add_argument(
        "--max-requests",
        type=int,
        default=1_000_000,
        help="stop sending after this many requests (default: 1000000)",
    )
    parser.add_argument(
        "--timeout-s", type=positive_float, default=10.0, help="per-request timeout (default: 10)"
    )
    parser.add_argument(
        "--json-tensors",
        action="store_true",
        help="send and receive JSON tensors instead of the binary tensor extension",
    )
    parser.add_argument(
        "--replay",
        type=Path,
        default=None,
        metavar="FILE",
        help="replay arrivals from a CSV (or Parquet) with columns time (or timestamp, "
        "seconds), model and optionally high_priority, instead of --rate/--arrivals",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=512,
        help="keep-alive connections at most; a request waits for a free one (default: 512)",
    )
    parser.add_argument(
        "--expect-continue-kb",
        type=int,
        default=64,
        help="bodies of this many KiB or more wait for the server's 100 Continue, so a "
        "server that refuses from the headers never receives them (0: never; default: 64)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write DIR/results.json")
    add_progress_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require(0.0 <= args.hp_frac <= 1.0, f"--hp-frac must be in [0, 1], got {args.hp_frac}")
    require(args.max_connections >= 1, "--max-connections must be at least 1")
    require(args.expect_continue_kb >= 0, "--expect-continue-kb must be >= 0")
    require(args.replay is None or args.replay.is_file(), f"--replay {args.replay}: no such file")
    require_out_folder(args.out)

    from predlat.serving.loadgen import LoadConfig
    from predlat.serving.loadgen import run as run_load

    config = LoadConfig(
        url=args.url.rstrip("/"),
        rate=args.rate,
        duration_s=args.duration,
        arrivals=args.arrivals,
        models=tuple(args.models) if args.models else None,
        deadline_ms=args.deadline_ms,
        hp_frac=args.hp_frac,
        seed=args.seed,
        max_requests=args.max_requests,
        timeout_s=args.timeout_s,
        binary=not args.json_tensors,
        max_connections=args.max_connections,
        expect_continue_bytes=args.expect_continue_kb * 1024,
        replay=str(args.replay) if args.replay is not None else None,
    )
    results = run_load(config, progress=not args.no_progress)
    print_report(results)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "results.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")
    return 0


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(results: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a pipe or file: do not squeeze the table into 80 columns
        console = Console(width=120)
    lat = results["latency_ms"]
    over = results["server_overhead_ms"]
    console.print(
        f"{results['requests']} requests in {results['wall_s']:.1f} s: offered "
        f"{_fmt(results['offered_rate_rps'], 1)}/s, answered OK "
        f"{_fmt(results['achieved_rate_rps'], 1)}/s; latency p50 {_fmt(lat['p50'])} ms, "
        f"p99 {_fmt(lat['p99'])} ms; outside the runtime (HTTP, client) p50 "
        f"{_fmt(over['p50'], 3)} ms, p99 {_fmt(over['p99'], 3)} ms"
    )
    table = Table(title="deadline satisfaction", box=box.SIMPLE_HEAD)
    for column in (
        "priority",
        "sent",
        "ok",
        "met",
        "missed",
        "refused",
        "server",
        "client",
        "p50 ms",
        "p99 ms",
    ):
        table.add_column(column, justify="left" if column == "priority" else "right")
    for name, group in results["by_priority"].items():
        if not group["sent"]:
            continue
        table.add_row(
            name,
            str(group["sent"]),
            str(group["ok"]),
            str(group["met"]),
            str(group["missed"]),
            str(group["refused_or_failed"]),
            _fmt(group["deadline_satisfaction_server"], 3),
            _fmt(group["deadline_satisfaction_client"], 3),
            _fmt(group["latency_ms"]["p50"]),
            _fmt(group["latency_ms"]["p99"]),
        )
    console.print(table)
    codes = ", ".join(f"{code}: {n}" for code, n in results["status_codes"].items())
    console.print(f"status codes: {codes}")
    lag, refused = results["send_lag_ms"], results["refusal_latency_ms"]
    console.print(
        f"send lag p50 {_fmt(lag['p50'], 3)} ms, p99 {_fmt(lag['p99'], 3)} ms; refusals "
        f"answered in p50 {_fmt(refused['p50'])} ms, p99 {_fmt(refused['p99'])} ms"
    )
    server = results.get("server")
    if server:
        counted = ", ".join(f"{k} {v:g}" for k, v in server.items())
        console.print(f"server counted: {counted}")
    for error, count in results["errors"].items():
        console.print(f"  {count} x {error}")
