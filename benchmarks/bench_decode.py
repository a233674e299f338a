"""JSON decode of a 1x3x224x224 FP32 infer request, and how long the event loop stalls
while the server decodes it (inline, on a thread, in a worker process).

    PYTHONPATH=src python3 benchmarks/bench_decode.py [--repeats 20]

Prints: decode time (median, p90) for the old path (json + numpy) and orjson, and the
longest event-loop stall seen by a 1 ms ticker during an off-loop decode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import orjson

from predlat.models.spec import ModelSpec, TensorSpec
from predlat.serving.decode import OffLoopDecoder, decode_infer_request

SPEC = ModelSpec(
    name="resnet",
    path=Path("resnet.onnx"),
    inputs=(TensorSpec("x", np.dtype(np.float32), (None, 3, 224, 224)),),
    outputs=(TensorSpec("y", np.dtype(np.float32), (None, 1000)),),
    digest="0",
)


def body() -> bytes:
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    item = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return orjson.dumps({"inputs": [item]})


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def old_path(data: bytes) -> np.ndarray:
    doc = json.loads(data.decode())
    return np.asarray(doc["inputs"][0]["data"]).astype(np.float32).reshape(1, 3, 224, 224)


async def stalls(work: Callable[[], Awaitable[object]], repeats: int) -> list[float]:
    """Gaps past 1 ms between ticks of a 1 ms ticker on the loop while `work` runs
    `repeats` times: how long the loop was kept from its other connections."""
    gaps: list[float] = []
    stop = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(max(0.0, now - last - 0.001))
            last = now

    task = asyncio.create_task(ticker())
    for _ in range(repeats):
        await work()
    stop = True
    await task
    return gaps


def summary(name: str, seconds: list[float]) -> None:
    p90 = sorted(seconds)[int(0.9 * (len(seconds) - 1))]
    print(f"{name:<28} median {statistics.median(seconds) * 1e3:7.1f} ms   p90 {p90 * 1e3:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    data = body()
    print(f"body: {len(data) / 1e6:.1f} MB JSON (1x3x224x224 FP32)")
    summary("json + numpy (before)", timed(lambda: old_path(data), args.repeats))
    summary(
        "orjson + numpy (now)", timed(lambda: decode_infer_request(data, None, SPEC), args.repeats)
    )
    idle = asyncio.run(stalls(lambda: asyncio.sleep(0.04), args.repeats))
    stall_line("nothing (baseline)", idle)
    for processes, label in ((0, "a thread"), (1, "a worker process")):
        decoder = OffLoopDecoder(processes=processes)
        decoder.start()
        gaps = asyncio.run(stalls(lambda d=decoder: d.decode(data, None, SPEC), args.repeats))
        decoder.close()
        stall_line(f"decoding on {label}", gaps)
    print("(the baseline is how long the OS alone kept an idle loop waiting in this run)")


def stall_line(label: str, gaps: list[float]) -> None:
    p99 = sorted(gaps)[int(0.99 * (len(gaps) - 1))] if gaps else 0.0
    worst = max(gaps, default=0.0)
    print(f"event-loop stall, {label:<26} p99 {p99 * 1e3:6.1f} ms   max {worst * 1e3:6.1f} ms")


if __name__ == "__main__":
    main()
