"""Overhead and sustained request rate of the HTTP server on the tiny model.

    python benchmarks/bench_server.py [--rate 200] [--duration 10] [--slots 2]
        [--policy predlat] [--framework starlette|fastapi|both] [--out DIR]
        [--loop auto|asyncio|uvloop] [--http auto|h11|httptools] [--server-cpus 0,1]
        [--controller loop|thread] [--client-loop auto|asyncio|uvloop]

The server runs in a process of its own (as `predlat serve` does). Phases, per framework:

1. open loop at --rate requests/s for --duration s (Poisson arrivals from
   predlat.workload, binary tensors, one row per request), sent by a lean keep-alive
   HTTP/1.1 client (a few dozen microseconds per request, so the figures are the
   server's, not the client's). End-to-end latency minus
   - the batch's device time (`predlat_compute_ms` in the response): the server overhead
     the targets are about (p50 < 1 ms, p99 < 5 ms). It includes the scheduler's path to
     a slot and back (dispatch, wake-ups), not only HTTP;
   - the runtime's arrival-to-end time (`predlat_latency_ms`): HTTP, decoding, encoding
     and the hand-off back to the event loop only;
   the answer's Server-Timing (first byte to answer ready, the server's clock) minus the
   device time: the overhead as the server sees it, without the client's own costs;
   and the server's own histogram of the latter (`predlat_server_overhead_seconds`).
2. the same open loop with `predlat load`'s generator: what that tool reports,
   client costs included.
3. closed loop at increasing concurrency with the lean client: answered requests/s, the
   sustained rate. Client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from predlat.serving import protocol
from predlat.serving.loadgen import LoadConfig, run_load
from predlat.workload.arrivals import open_loop_workload

OVERHEAD_METRIC = "predlat_server_overhead_seconds"
SERVER_MS = "server_ms"  # (bench-side key) the answer's Server-Timing, in ms
INFER_PATH = "/v2/models/tiny/infer"


# -- the server process ------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Child mode: the same stack as `predlat serve`, with a choice of framework, event
    loop and HTTP parser."""
    if args.switch_ms > 0:
        sys.setswitchinterval(args.switch_ms / 1e3)
    from predlat.models import resolve_models
    from predlat.runtime import build_runtime
    from predlat.serving.app import ServerConfig, create_app
    from predlat.serving.server import bind_socket, run_server

    specs = resolve_models(["tiny"])
    runtime, _ = build_runtime(["tiny"], slots=args.slots, policy=args.policy, progress=False)
    config = ServerConfig({"tiny": args.deadline_ms / 1e3})
    app = create_app(runtime, specs, config, framework=args.serve)
    sock = bind_socket("127.0.0.1", 0)
    if args.controller == "thread":
        runtime.start()  # else the app starts the runtime on its event loop
    print(f"listening http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    try:
        run_server(app, sock, loop=args.loop, http=args.http)
    finally:
        runtime.stop(drain=True)  # a no-op once the app drained it


def start_server(args: argparse.Namespace, framework: str) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, __file__, "--serve", framework]
    for flag in ("slots", "policy", "deadline_ms", "switch_ms", "loop", "http", "controller"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.server_cpus:
        command = ["taskset", "-c", args.server_cpus, *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    match = re.search(r"http://[\d.]+:\d+", line)
    if not match:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return process, match.group(0)


# -- a lean HTTP/1.1 client (our server always answers with Content-Length) ---------------


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, request: bytes) -> tuple[int, dict[str, Any]]:
        """Send a prepared request; the status and the response's `parameters`."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        body = await self.reader.readexactly(length)
        if status != 200:
            return status, {}
        header = re.search(rb"(?i)\r\ninference-header-content-length: *(\d+)", head)
        doc = json.loads(body[: int(header.group(1))] if header else body)
        params = doc.get("parameters", {})
        timing = re.search(rb"(?i)\r\nserver-timing: *server;dur=([\d.]+)", head)
        params[SERVER_MS] = float(timing.group(1)) if timing else float("nan")
        return status, params

    def close(self) -> None:
        self.writer.close()


def prepared_request() -> bytes:
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    body, headers = protocol.encode_infer_request({"x": x})
    lines = [f"POST {INFER_PATH} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def open_loop(url: str, rate: float, duration: float, seed: int) -> dict[str, Any]:
    """Arrivals on a Poisson schedule; each takes an idle keep-alive connection or opens
    one, so a slow answer never delays the next send."""
    request = prepared_request()
    arrivals = open_loop_workload({"tiny": rate}, duration, seed)
    idle: list[Connection] = []
    rows: list[tuple[float, float, float, float, float]] = []
    codes: dict[int, int] = {}
    lags: list[float] = []

    async def one() -> None:
        conn = idle.pop() if idle else await Connection.open(url)
        t0 = time.perf_counter()
        try:
            status, params = await conn.post(request)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed this keep-alive connection while it sat idle (uvicorn's
            # keep-alive timeout): as any HTTP client does, send again on a new one.
            conn.close()
            conn = await Connection.open(url)
            t0 = time.perf_counter()
            status, params = await conn.post(request)
        e2e = time.perf_counter() - t0
        idle.append(conn)
        codes[status] = codes.get(status, 0) + 1
        if status == 200:
            rows.append(
                (
                    e2e * 1e3,
                    params["predlat_compute_ms"],
                    params["predlat_latency_ms"],
                    params["predlat_queue_ms"],
                    params[SERVER_MS],
                )
            )

    for _ in range(4):
        idle.append(await Connection.open(url))
    tasks = []
    start = time.perf_counter()
    for arrival in arrivals:
        delay = arrival.time - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append((time.perf_counter() - start - arrival.time) * 1e3)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    a = np.asarray(rows)
    return {
        "requests": len(arrivals),
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "latency_ms": _pct(a[:, 0]),
        "overhead_vs_device_ms": _pct(a[:, 0] - a[:, 1]),
        "overhead_http_only_ms": _pct(a[:, 0] - a[:, 2]),
        "in_server_minus_device_ms": _pct(a[:, 4] - a[:, 1]),
        "runtime_queue_ms": _pct(a[:, 3]),
        "device_ms": _pct(a[:, 1]),
        "send_lag_ms": _pct(np.asarray(lags)),
    }


async def closed_loop(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    request = prepared_request()
    latencies: list[float] = []
    overheads: list[float] = []
    in_server: list[float] = []
    codes: dict[int, int] = {}
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        conn = await Connection.open(url)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status, params = await conn.post(request)
            e2e = (time.perf_counter() - t0) * 1e3
            codes[status] = codes.get(status, 0) + 1
            if status == 200:
                latencies.append(e2e)
                overheads.append(e2e - params["predlat_compute_ms"])
                in_server.append(params[SERVER_MS] - params["predlat_compute_ms"])
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "ok_per_s": round(len(latencies) / wall, 1),
        "latency_ms": _pct(np.asarray(latencies)),
        "overhead_vs_device_ms": _pct(np.asarray(overheads)),
        "in_server_minus_device_ms": _pct(np.asarray(in_server)),
        "codes": {str(k): v for k, v in sorted(codes.items())},
    }


def _pct(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return {"p50": None, "p99": None}
    return {
        "p50": round(float(np.percentile(values, 50)), 4),
        "p99": round(float(np.percentile(values, 99)), 4),
    }


# -- the server's own histogram ------------------------------------------------------------


def histogram(url: str, name: str) -> tuple[list[float], list[float]]:
    """Cumulative bucket counts of a histogram from /metrics: (upper bounds, counts)."""
    bounds, counts = [], []
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == name + "_bucket":
                bounds.append(float(s.labels["le"]))
                counts.append(s.value)
    return bounds, counts


def histogram_growth(
    url: str, name: str, before: tuple[list[float], list[float]], qs: Sequence[float] = (0.5, 0.99)
) -> tuple[float, list[float]]:
    """What histogram `name` gained since `before` (an earlier `histogram` reading): its
    count and quantiles (s), one phase's share without earlier phases' (zeros if none)."""
    bounds, counts = histogram(url, name)
    delta = [a - b for a, b in zip(counts, before[1], strict=True)]
    if not delta or not delta[-1]:
        return 0.0, [0.0 for _ in qs]
    return delta[-1], [histogram_quantile(bounds, delta, q) for q in qs]


def histogram_quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float:
    """Prometheus-style quantile: linear within the bucket that holds it."""
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, cumulative
    return lower


# -- the run ------------------------------------------------------------------------------


def client_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The lean client's event loop: uvloop when installed (auto), so that as little of
    the measured time as possible is the client's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--client-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run_client(coro: Coroutine[Any, Any, Any], args: argparse.Namespace) -> Any:
    with asyncio.Runner(loop_factory=client_loop_factory(args.client_loop)) as runner:
        return runner.run(coro)


def bench(args: argparse.Namespace, framework: str) -> dict[str, Any]:
    process, url = start_server(args, framework)
    try:
        run_client(open_loop(url, 100, 1.0, seed=99), args)  # warm-up
        before = histogram(url, OVERHEAD_METRIC)
        lean = run_client(open_loop(url, args.rate, args.duration, seed=1), args)
        _, (p50, p99) = histogram_growth(url, OVERHEAD_METRIC, before)
        lean["in_handler_ms"] = {"p50": round(p50 * 1e3, 4), "p99": round(p99 * 1e3, 4)}
        config = LoadConfig(url=url, rate=args.rate, duration_s=args.duration, seed=1)
        tool = asyncio.run(run_load(config))  # as `predlat load` runs it
        ramp = [run_client(closed_loop(url, c, args.closed_s), args) for c in args.concurrency]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return {
        "framework": framework,
        "rate": args.rate,
        "duration_s": args.duration,
        "open_loop_lean_client": lean,
        "open_loop_predlat_load": {
            k: tool[k]
            for k in (
                "requests",
                "status_codes",
                "achieved_rate_rps",
                "latency_ms",
                "overhead_vs_compute_ms",
                "server_overhead_ms",
                "send_lag_ms",
            )
        },
        "closed_loop": ramp,
        "sustained_ok_per_s": max(r["ok_per_s"] for r in ramp),
    }


def report(r: dict[str, Any]) -> None:
    lean, tool = r["open_loop_lean_client"], r["open_loop_predlat_load"]

    def pair(d: dict) -> str:
        return f"p50 {d['p50']:.3f} ms  p99 {d['p99']:.3f} ms"

    print(
        f"== {r['framework']}: open loop {r['rate']:.0f} req/s for {r['duration_s']:.0f} s, "
        f"{lean['requests']} requests, codes {lean['status_codes']}"
    )
    print(f"  end-to-end                    {pair(lean['latency_ms'])}")
    print(
        f"  overhead = e2e - device time  {pair(lean['overhead_vs_device_ms'])}"
        "   [targets: p50 < 1 ms, p99 < 5 ms]"
    )
    print(
        f"    of which HTTP path          {pair(lean['overhead_http_only_ms'])}"
        "   (e2e - runtime arrival-to-end)"
    )
    print(f"    of which scheduler queue    {pair(lean['runtime_queue_ms'])}")
    print(
        f"  in the server - device time   {pair(lean['in_server_minus_device_ms'])}"
        "   (Server-Timing: first byte to answer ready)"
    )
    print(f"  device time                   {pair(lean['device_ms'])}")
    print(
        f"  in the handler (server hist.) p50 {lean['in_handler_ms']['p50']} ms  "
        f"p99 {lean['in_handler_ms']['p99']} ms"
    )
    print(f"  client send lag               {pair(lean['send_lag_ms'])}")
    print(
        f"  via `predlat load`:           e2e {pair(tool['latency_ms'])}; e2e - device "
        f"{pair(tool['overhead_vs_compute_ms'])}; codes {tool['status_codes']}"
    )
    for c in r["closed_loop"]:
        print(
            f"  closed loop x{c['concurrency']:<3d} {c['ok_per_s']:8.1f} ok/s  e2e "
            f"{pair(c['latency_ms'])}; e2e - device {pair(c['overhead_vs_device_ms'])}; "
            f"codes {c['codes']}"
        )
    print(f"  sustained: {r['sustained_ok_per_s']:.0f} requests/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--policy", default="predlat")
    parser.add_argument(
        "--deadline-ms",
        type=float,
        default=100.0,
        help="server default deadline for tiny (default: 100)",
    )
    parser.add_argument(
        "--framework", choices=("starlette", "fastapi", "both"), default="starlette"
    )
    parser.add_argument(
        "--concurrency",
        type=lambda t: [int(v) for v in t.split(",")],
        default=[1, 8, 32],
        help="closed-loop client counts (default: 1,8,32)",
    )
    parser.add_argument("--closed-s", type=float, default=4.0, help="seconds per level")
    parser.add_argument("--out", type=Path, default=None, help="write DIR/results.json")
    parser.add_argument(
        "--switch-ms",
        type=float,
        default=0.0,
        help="server's interpreter thread switch interval, ms (0: the runtime's, which "
        "lowers CPython's 5 ms to 1 ms at start)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="server event loop (auto: uvloop if installed)",
    )
    parser.add_argument(
        "--http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="server HTTP parser (auto: httptools if installed)",
    )
    parser.add_argument(
        "--server-cpus",
        default=None,
        help="pin the server process to these CPUs (taskset list, e.g. 0,1)",
    )
    parser.add_argument(
        "--controller",
        choices=("loop", "thread"),
        default="loop",
        help="where the runtime's controller runs: on the server's event loop (as "
        "`predlat serve`) or on a control thread of its own",
    )
    parser.add_argument(
        "--client-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the lean client's event loop (auto: uvloop if installed)",
    )
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    frameworks = ["starlette", "fastapi"] if args.framework == "both" else [args.framework]
    switch = args.switch_ms or "1 (the runtime's)"
    print(
        f"machine: {os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable here; "
        f"server in its own process (loop {args.loop}, http {args.http}, cpus "
        f"{args.server_cpus or 'any'}, switch {switch} ms, controller on "
        f"{args.controller}), client here (loop {args.client_loop})"
    )
    results = []
    for framework in frameworks:
        results.append(bench(args, framework))
        report(results[-1])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
