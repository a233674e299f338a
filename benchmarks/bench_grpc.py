"""Server overhead over gRPC on the tiny model, open loop, against HTTP on the same server.

    PYTHONPATH=src python3 benchmarks/bench_grpc.py [--rate 200] [--duration 5] [--rounds 3]
        [--server-cmd "python -m predlat"] [--client future|aio]

`predlat serve --models tiny` runs in a process of its own, with both front ends. Each
round offers --rate req/s on a Poisson schedule for --duration s over gRPC (ModelInfer
with raw tensor contents, as tritonclient.grpc sends it, through the sync stub's futures
as its async_infer does; `--client aio`: a grpc.aio client instead), then the
same over HTTP (bench_server's lean keep-alive client, binary tensors): interleaved, so
both see the same machine. Per answer: end-to-end latency minus the batch's device time
(`predlat_compute_ms`, the overhead the issue's targets are about: p50 < 1 ms, p99 < 5 ms)
and minus the runtime's arrival-to-end time (`predlat_latency_ms`: the front end,
decoding, encoding and the hand-offs only); the answer's Server-Timing (HTTP header,
gRPC trailing metadata: the server's own clock from the request's arrival to its answer
being ready) minus device time, the overhead as the server sees it, without the client's
costs or the transport's below the handler; and, from the server's own histogram
(`predlat_server_overhead_seconds`, bucketed), the handler time outside the runtime,
which no client cost inflates. Figures are per round, then the median of the rounds.
Client and server share the machine's cores, so the client's own cost is in the
client-side figures (the same for both transports only as far as the clients are alike).

Each round also offers the same loads to bare echo servers in processes of their own
(echo_servers.py: grpc.aio with the same service definitions; Starlette on uvicorn, as
predlat serves; both answering at once): the floor each transport sets on this machine,
client and server, before predlat does anything.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import subprocess
import sys
import time
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench_server import OVERHEAD_METRIC, histogram, histogram_growth
from bench_server import closed_loop as http_closed_loop
from bench_server import open_loop as http_open_loop
from echo_servers import start_echo
from machine_probe import idle_penalty_us

FIGURES = ("end to end", "overhead (minus compute)", "outside the runtime",
           "in the server (minus compute)", "server side")  # fmt: skip


def start_server(server_cmd: str) -> tuple[subprocess.Popen, str, str]:
    """The server and its HTTP URL and gRPC address (the first two lines it prints)."""
    command = [*shlex.split(server_cmd), "serve", "--models", "tiny", "--port", "0",
               "--grpc-port", "0", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    http = re.search(r"http://[\d.]+:\d+", process.stdout.readline())
    address = re.search(r"gRPC on ([\d.]+:\d+)", process.stdout.readline())
    if http is None or address is None:
        process.kill()
        raise SystemExit("server did not start both front ends")
    return process, http.group(0), address.group(1)


def request() -> service_pb2.ModelInferRequest:
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    req = service_pb2.ModelInferRequest(model_name="tiny")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(x.tobytes())
    return req


def answer_row(
    answer: service_pb2.ModelInferResponse, total: float, trailing: Any
) -> tuple[float, ...]:
    """(end to end, minus compute, minus runtime, in the server minus compute) in s, from
    an answer's parameters and its trailing metadata's Server-Timing (NaN: none)."""
    params = answer.parameters
    compute = params["predlat_compute_ms"].double_param / 1e3
    runtime = params["predlat_latency_ms"].double_param / 1e3
    timing = dict(trailing or ()).get("server-timing", "")
    found = re.fullmatch(r"server;dur=([\d.]+)", timing)
    server = float(found.group(1)) / 1e3 if found else float("nan")
    return total, total - compute, total - runtime, server - compute


async def grpc_open_loop(address: str, rate: float, duration: float, seed: int) -> np.ndarray:
    """Rows of (end to end, minus compute, minus runtime) in ms, one per answer."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = request()
        await stub.ModelInfer(req)  # warm the channel
        rng = np.random.default_rng(seed)
        times = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * duration)))
        out: list[tuple[float, ...]] = []

        async def one() -> None:
            began = time.perf_counter()
            try:
                call = stub.ModelInfer(req)
                answer = await call
            except grpc.aio.AioRpcError:
                return
            total = time.perf_counter() - began
            out.append(answer_row(answer, total, await call.trailing_metadata()))

        tasks, t0 = [], time.perf_counter()
        for due in times:
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        return np.asarray(out) * 1e3


def grpc_open_loop_futures(address: str, rate: float, duration: float, seed: int) -> np.ndarray:
    """As grpc_open_loop, with the sync stub's futures (what tritonclient.grpc's
    async_infer does): calls are sent from this thread, answers timed in gRPC's
    callback thread."""
    out: list[tuple[float, ...]] = []
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = request()
        stub.ModelInfer(req)  # warm the channel
        rng = np.random.default_rng(seed)
        times = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * duration)))

        def done(call: grpc.Future, began: float) -> None:
            total = time.perf_counter() - began
            if call.exception() is None:
                out.append(answer_row(call.result(), total, call.trailing_metadata()))

        calls, t0 = [], time.perf_counter()
        for due in times:
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            call = stub.ModelInfer.future(req)
            call.add_done_callback(lambda c, b=began: done(c, b))
            calls.append(call)
        for call in calls:
            call.exception()  # (waits; failures are left out of the figures)
    return np.asarray(out) * 1e3


def grpc_back_to_back(address: str, seconds: float) -> np.ndarray:
    """Rows as grpc_open_loop's, one call at a time with none waiting in between: the same
    path with no idle gap before each request (see machine_probe.idle_penalty_us)."""
    out: list[tuple[float, ...]] = []
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = request()
        stub.ModelInfer(req)  # warm the channel
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            began = time.perf_counter()
            answer, call = stub.ModelInfer.with_call(req)
            total = time.perf_counter() - began
            out.append(answer_row(answer, total, call.trailing_metadata()))
    return np.asarray(out) * 1e3


def back_to_back(url: str, address: str, seconds: float) -> dict[str, np.ndarray]:
    """(overhead minus compute, in the server minus compute) p50/p99 per transport."""
    rows = grpc_back_to_back(address, seconds)
    grpc_figures = np.percentile(rows[:, [1, 3]], [50, 99], axis=0).T
    r = asyncio.run(http_closed_loop(url, 1, seconds))
    keys = ("overhead_vs_device_ms", "in_server_minus_device_ms")
    http_figures = np.array([[r[k]["p50"], r[k]["p99"]] for k in keys])
    return {"gRPC": grpc_figures, "HTTP": http_figures}


def grpc_round(address: str, args: argparse.Namespace, seed: int) -> tuple[int, np.ndarray]:
    if args.client == "future":
        rows = grpc_open_loop_futures(address, args.rate, args.duration, seed)
    else:
        rows = asyncio.run(grpc_open_loop(address, args.rate, args.duration, seed))
    return len(rows), np.percentile(rows, [50, 99], axis=0).T  # (figure, p50/p99)


def http_round(url: str, args: argparse.Namespace, seed: int) -> tuple[int, np.ndarray]:
    r = asyncio.run(http_open_loop(url, args.rate, args.duration, seed))
    keys = ("latency_ms", "overhead_vs_device_ms", "overhead_http_only_ms",
            "in_server_minus_device_ms")  # fmt: skip
    return r["status_codes"].get("200", 0), np.array([[r[k]["p50"], r[k]["p99"]] for k in keys])


def server_side(url: str, before: tuple[list[float], list[float]]) -> np.ndarray:
    """p50/p99 (ms) of the handler time outside the runtime the server measured over a
    phase (its histogram's growth): the front end's own cost, without the client's."""
    return np.array(histogram_growth(url, OVERHEAD_METRIC, before)[1]) * 1e3


def print_round(name: str, answered: int | None, figures: np.ndarray) -> None:
    """One row: the first len(figures) of FIGURES (the echo has end to end only)."""
    cells = "; ".join(
        f"{f} p50 {p50:.3f} p99 {p99:.3f}" for f, (p50, p99) in zip(FIGURES, figures, strict=False)
    )
    count = "" if answered is None else f"{answered:5d} answered: "
    print(f"  {name:<9} {count}{cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--back-to-back-s", type=float, default=2.0, help="seconds per back-to-back phase"
    )
    parser.add_argument("--server-cmd", default=f"{sys.executable} -m predlat")
    parser.add_argument(
        "--client",
        choices=("future", "aio"),
        default="future",
        help="gRPC client: the sync stub's futures (as tritonclient.grpc) or grpc.aio",
    )
    args = parser.parse_args()
    process, url, address = start_server(args.server_cmd)
    echo, echo_address = start_echo("grpc")
    http_echo, http_echo_url = start_echo("http")
    results: dict[str, list[np.ndarray]] = {"gRPC": [], "HTTP": [], "echo": [], "HTTP echo": []}
    closed: dict[str, list[np.ndarray]] = {"gRPC": [], "HTTP": []}
    print_idle_penalty("before")
    try:
        time.sleep(1.0)
        asyncio.run(http_open_loop(url, 100, 1.0, seed=99))  # warm-up
        print(f"tiny, {args.rate:g} req/s open loop for {args.duration:g} s per phase (ms):")
        for i in range(args.rounds):
            for name, phase in (("gRPC", grpc_round), ("HTTP", http_round)):
                before = histogram(url, OVERHEAD_METRIC)
                answered, figures = phase(address if name == "gRPC" else url, args, i)
                figures = np.vstack([figures, server_side(url, before)])
                print_round(name, answered, figures)
                results[name].append(figures)
            for name, phase, at in (("echo", grpc_round, echo_address),
                                    ("HTTP echo", http_round, http_echo_url)):  # fmt: skip
                answered, figures = phase(at, args, i)
                print_round(name, answered, figures[:1])
                results[name].append(figures[:1])
            for name, figures in back_to_back(url, address, args.back_to_back_s).items():
                closed[name].append(figures)
    finally:
        process.terminate()
        for child in (echo, http_echo):
            child.terminate()
        for child in (process, echo, http_echo):
            child.wait(30)
    print(f"median of {args.rounds} rounds (ms):")
    for name, rounds in results.items():
        print_round(name, None, np.median(np.stack(rounds), axis=0))
    print("  targets: overhead p50 < 1 ms, p99 < 5 ms (both transports)")
    print("  echo, HTTP echo: bare servers answering at once, same clients and load (the floors)")
    print(f"back to back, one call at a time ({args.back_to_back_s:g} s per round), median of "
          f"{args.rounds} rounds (ms):")  # fmt: skip
    for name, rounds in closed.items():
        (o50, o99), (s50, s99) = np.median(np.stack(rounds), axis=0)
        print(f"  {name:<5} overhead (minus compute) p50 {o50:.3f} p99 {o99:.3f}; "
              f"in the server (minus compute) p50 {s50:.3f} p99 {s99:.3f}")  # fmt: skip
    print_idle_penalty("after")


def print_idle_penalty(when: str) -> None:
    warm, after_idle = idle_penalty_us()
    print(f"machine, {when}: a fixed piece of interpreter work takes {warm:.1f} us back to "
          f"back, {after_idle:.1f} us after 5 ms asleep ({after_idle / warm:.2f}x)",
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
