"""bench_ray's phase 4: the latency the Ray front door adds over plain `predlat serve`,
over each transport to the replica, and Ray Serve's own floor (an echo deployment)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import numpy as np

from predlat.cluster.frontdoor import ClusterRuntime, infer_handle
from predlat.cluster.messages import TRANSPORTS, Route
from predlat.models import resolve_models
from predlat.runtime import build_runtime
from predlat.scheduling.request import Priority
from predlat.serving import protocol
from predlat.serving.app import ServerConfig, create_app
from predlat.serving.server import BackgroundServer
from ray_common import Cluster, serve


def http_latency(urls: dict[str, str], model: str, feeds, n: int) -> dict[str, np.ndarray]:
    """Sequential requests (binary tensors, as tritonclient sends them), taking the
    servers in turn, so that each sees the machine as the others do; ms per server,
    warm-up dropped."""
    body, headers = protocol.encode_infer_request(feeds[model], parameters={"deadline_ms": 1000})
    times: dict[str, list[float]] = {name: [] for name in urls}
    with httpx.Client() as client:
        for _ in range(n):
            for name, url in urls.items():
                began = time.perf_counter()
                r = client.post(
                    f"{url}/v2/models/{model}/infer", content=body, headers=headers, timeout=30
                )
                times[name].append(time.perf_counter() - began)
                r.raise_for_status()
    return {name: np.asarray(t[n // 10 :]) * 1e3 for name, t in times.items()}


@serve.deployment(
    logging_config={"enable_access_log": False},
    ray_actor_options={
        "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}
    },
)
class Echo:
    """Ray Serve's own floor: a replica that answers at once, set up as predlat's is."""

    async def infer(self, route: Any, inputs: Any) -> int:
        return route.rows


def handle_round_trip_ms(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Sequential calls to an echo deployment's handle with the light model's inputs
    and a Route, awaited on an event loop as the front door does, over each transport
    in turn; ms per transport, warm-up dropped."""
    handle = serve.run(Echo.bind(), name="echo", route_prefix=None)
    handles = {t: infer_handle(handle, t) for t in TRANSPORTS}
    route = Route("echo", 1, Priority.LOW, time.time() + 60.0)

    async def calls() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {t: [] for t in handles}
        for _ in range(n):
            for t, h in handles.items():
                began = time.perf_counter()
                await h.remote(route, feeds)
                times[t].append(time.perf_counter() - began)
        return times

    try:
        times = asyncio.run(calls())
    finally:
        serve.delete("echo")
    return {t: np.asarray(v[n // 10 :]) * 1e3 for t, v in times.items()}


def added_latency(args, feeds) -> dict[str, float]:
    """The light model through plain `predlat serve` and through the Ray front door over
    each transport (1 replica), all up at once and asked in turn; and Serve's floor."""
    spec = resolve_models([args.light])
    runtime, _ = build_runtime([args.light], slots=1, policy="predlat", progress=False)
    cluster = Cluster([args.light], 1)
    doors = {t: ClusterRuntime(cluster.handle, cluster.specs, t) for t in TRANSPORTS}
    try:
        with contextlib.ExitStack() as stack:
            apps = {"plain": runtime, **{f"ray-{t}": doors[t] for t in TRANSPORTS}}
            urls = {
                name: stack.enter_context(
                    BackgroundServer(create_app(rt, spec, ServerConfig()))
                ).url
                for name, rt in apps.items()
            }
            times = http_latency(urls, args.light, feeds, args.requests)
    finally:
        for door in doors.values():
            door.close()
        cluster.close()
    floor = handle_round_trip_ms(feeds[args.light], args.requests)
    res: dict[str, float] = {}
    for name, t in times.items():
        res[f"{name}_p50_ms"], res[f"{name}_p99_ms"] = (
            float(v) for v in np.percentile(t, [50, 99])
        )
    for t in TRANSPORTS:
        res[f"added_{t}_p50_ms"] = res[f"ray-{t}_p50_ms"] - res["plain_p50_ms"]
        res[f"serve_echo_{t}_p50_ms"], res[f"serve_echo_{t}_p99_ms"] = (
            float(v) for v in np.percentile(floor[t], [50, 99])
        )
    res["added_p50_ms"] = res["added_grpc_p50_ms"]  # the default transport's
    print(
        f"  plain predlat serve p50 {res['plain_p50_ms']:.2f} ms, p99 {res['plain_p99_ms']:.2f} ms"
    )
    for t in TRANSPORTS:
        print(
            f"  via Ray ({t}{', the default' if t == 'grpc' else ''}): p50"
            f" {res[f'ray-{t}_p50_ms']:.2f} ms, p99 {res[f'ray-{t}_p99_ms']:.2f} ms: added p50"
            f" {res[f'added_{t}_p50_ms']:.2f} ms; Serve's own handle round trip (an echo"
            f" deployment, same inputs) p50 {res[f'serve_echo_{t}_p50_ms']:.2f} ms, p99"
            f" {res[f'serve_echo_{t}_p99_ms']:.2f} ms",
            flush=True,
        )
    print("  target: added p50 < 3 ms (default transport)", flush=True)
    return res
