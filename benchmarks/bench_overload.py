"""Overload at the door: an open-loop client offering 1.5x what the server can serve on
time, JSON and binary tensors alike, against `predlat serve` in a process of its own.

    PYTHONPATH=src python3 benchmarks/bench_overload.py [--model resnet] [--deadline-ms 150]
        [--duration 10] [--factor 1.5] [--probe-rate 100] [--rate R]

1. warm-up: --warmup s at --probe-rate (discarded: the engine's first batches, and the
   door learning how its forecasts compare with the answers);
   capacity probe: offer --probe-rate req/s (binary) for a few seconds, doubling the
   rate while nearly all of it is met; the capacity is the rate of answers that met
   their deadline at the first rate the server could not keep up with.
2. for binary, then JSON tensors: offer --factor x capacity for --duration s, every
   request with the deadline, and print the issue's figures:
   - p99 latency of requests answered 200 (target: <= the deadline);
   - p99 time to a refusal (target: <= 5 ms), and how many refusals the door made
     (before the body) against those the scheduler made after queueing; the client's
     figure (it shares the cores, and writing a 3 MB JSON body holds up its own loop),
     then the server's own (`predlat_refusal_latency_seconds`: from the request's first
     byte at the server to the answer) with the server's event-loop lag;
   - nothing lost: answered + refused == sent, and the server's /metrics agree.
--rate R skips the probe and offers R req/s (the same load to two versions compared).
--compute-nice N and --expect-continue-kb K override the server's and the client's
defaults (to measure what each contributes).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench_server import histogram, histogram_growth
from predlat.serving.loadgen import LoadConfig, run

REFUSAL_METRIC = "predlat_refusal_latency_seconds"

# The probe doubles its rate (at most this many times) while it meets more than this
# share of what it offers.
PROBE_DOUBLINGS = 4
PROBE_SATURATED = 0.9


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "predlat", "serve", "--models", args.model, "--port", "0",
               "--grpc-port", "-1", "--no-progress", "--default-deadline-ms",
               str(args.deadline_ms), "--slots", str(args.slots)]  # fmt: skip
    if args.compute_nice is not None:
        command += ["--compute-nice", str(args.compute_nice)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline() if process.stdout else ""
    match = re.search(r"http://[\d.]+:\d+", line)
    if not match:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}")
    url = match.group(0)
    until = time.monotonic() + 60
    while time.monotonic() < until:
        try:
            if httpx.get(url + "/v2/health/ready").status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("server never became ready")


def offer(url: str, args: argparse.Namespace, rate: float, seconds: float, binary: bool) -> dict:
    config = LoadConfig(url=url, rate=rate, duration_s=seconds, models=(args.model,),
                        deadline_ms=args.deadline_ms, binary=binary, seed=args.seed,
                        timeout_s=max(5.0, 20 * args.deadline_ms / 1e3))  # fmt: skip
    if args.expect_continue_kb is not None:
        config = dataclasses.replace(config, expect_continue_bytes=args.expect_continue_kb * 1024)
    return run(config, progress=False)


def gauge(url: str, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return float("nan")


def server_refusals(url: str, before: tuple[list[float], list[float]]) -> str:
    """The server's own view of a phase's refusals (its histogram's growth): from a
    request's first byte at the server to its 429/503 answer, no client cost in it."""
    count, quantiles = histogram_growth(url, REFUSAL_METRIC, before)
    if not count:
        return "no refusals"
    p50, p99 = (q * 1e3 for q in quantiles)
    lag = gauge(url, "predlat_event_loop_lag_seconds") * 1e3
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (bucketed); event-loop lag p99 {lag:.1f} ms"


def report(name: str, r: dict, deadline_ms: float) -> None:
    codes = r["status_codes"]
    sent = r["requests"]
    answered = int(codes.get("200", 0))
    refused = sum(n for c, n in codes.items() if c not in ("0", "200"))
    lost = int(codes.get("0", 0))
    server = r.get("server", {})
    counted = sum(v for k, v in server.items() if k.startswith("predlat_requests{"))
    counted += sum(v for k, v in server.items() if k.startswith("predlat_refusals{"))
    lat, ref = r["latency_ms"], r["refusal_latency_ms"]
    print(f"{name}: offered {r['offered_rate_rps']} req/s, {sent} sent")
    print(f"  answered 200: {answered}, p99 {lat['p99']} ms (deadline {deadline_ms} ms)")
    at_door = sum(v for k, v in server.items() if k.startswith("predlat_refusals{"))
    print(f"  refused: {refused}, refusal p99 {ref['p99']} ms (target <= 5 ms); "
          f"{at_door:g} before the scheduler, {refused - at_door:g} by it")  # fmt: skip
    print(f"  lost (no answer): {lost}; answered + refused == sent: {answered + refused == sent}")
    print(f"  server counted {counted:g} requests (runtime outcomes + door refusals): "
          f"{'agrees' if counted == sent else 'DISAGREES'}; {server}")  # fmt: skip


def probe_capacity(url: str, args: argparse.Namespace) -> float:
    """Offer --probe-rate, doubling it while nearly everything offered is met: a rate
    the server still keeps up with says nothing of its capacity (a faster machine)."""
    rate = args.probe_rate
    for _ in range(PROBE_DOUBLINGS + 1):
        probe = offer(url, args, rate, 3.0, binary=True)
        met = probe["by_model"][args.model]["met"]
        capacity = max(1.0, met / 3.0)
        print(f"capacity on time: {capacity:.1f} req/s ({met} met of {probe['requests']} "
              f"offered at {rate:g} req/s for 3 s)")  # fmt: skip
        if met < PROBE_SATURATED * probe["requests"]:
            break
        rate *= 2.0
    return capacity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--deadline-ms", type=float, default=150.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=1.5)
    parser.add_argument("--probe-rate", type=float, default=100.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=None, help="fixed rate, no probe")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compute-nice", type=int, default=None, help="the server's")
    parser.add_argument("--expect-continue-kb", type=int, default=None, help="the client's")
    args = parser.parse_args()
    process, url = start_server(args)
    try:
        if args.warmup > 0:
            offer(url, args, args.probe_rate, args.warmup, binary=True)
        rate = args.rate or args.factor * probe_capacity(url, args)
        for binary in (True, False):
            before = histogram(url, REFUSAL_METRIC)
            r = offer(url, args, rate, args.duration, binary)
            report("binary tensors" if binary else "JSON tensors", r, args.deadline_ms)
            print(f"  refusals as the server timed them: {server_refusals(url, before)}")
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
