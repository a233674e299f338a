"""Server overhead over gRPC on the tiny model, open loop (the HTTP figures: bench_server).

    PYTHONPATH=src python3 benchmarks/bench_grpc.py [--rate 200] [--duration 10]

`predlat serve --models tiny` runs in a process of its own; a grpc.aio client sends
ModelInfer requests (raw tensor contents, as tritonclient.grpc does) on a Poisson
schedule. Per answer: end-to-end latency minus the batch's device time
(`predlat_compute_ms`, the overhead the issue's targets are about: p50 < 1 ms, p99 < 5 ms)
and minus the runtime's arrival-to-end time (`predlat_latency_ms`: gRPC, decoding,
encoding and the hand-offs only).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc


def start_server(rate_hint: float) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "predlat", "serve", "--models", "tiny", "--port", "0",
               "--grpc-port", "0", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for _ in range(2):
        line = process.stdout.readline()
        match = re.search(r"gRPC on ([\d.]+:\d+)", line)
        if match:
            return process, match.group(1)
    process.kill()
    raise SystemExit("server did not start its gRPC front end")


def request() -> service_pb2.ModelInferRequest:
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    req = service_pb2.ModelInferRequest(model_name="tiny")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(x.tobytes())
    return req


async def open_loop(address: str, rate: float, duration: float) -> list[tuple[float, ...]]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = request()
        await stub.ModelInfer(req)  # warm the channel
        rng = np.random.default_rng(0)
        times = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * duration)))
        out: list[tuple[float, ...]] = []

        async def one() -> None:
            began = time.perf_counter()
            try:
                answer = await stub.ModelInfer(req)
            except grpc.aio.AioRpcError:
                return
            total = time.perf_counter() - began
            params = answer.parameters
            compute = params["predlat_compute_ms"].double_param / 1e3
            runtime = params["predlat_latency_ms"].double_param / 1e3
            out.append((total, total - compute, total - runtime))

        tasks, t0 = [], time.perf_counter()
        for due in times:
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    process, address = start_server(args.rate)
    try:
        time.sleep(1.0)
        rows = np.asarray(asyncio.run(open_loop(address, args.rate, args.duration))) * 1e3
    finally:
        process.terminate()
        process.wait(30)
    sent = int(args.rate * args.duration)
    print(f"gRPC, tiny, {args.rate:g} req/s open loop: {len(rows)} answered of {sent}")
    for i, name in enumerate(("end to end", "overhead (minus compute)", "outside the runtime")):
        p50, p99 = np.percentile(rows[:, i], [50, 99])
        print(f"  {name:<26} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")
    print("  targets: overhead p50 < 1 ms, p99 < 5 ms")


if __name__ == "__main__":
    main()
