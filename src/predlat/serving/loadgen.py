"""An open-loop HTTP load generator for any Open Inference Protocol v2 server.

Open loop: requests leave at the arrival times of a seeded arrival process whatever the
server does, so a slow server faces a growing backlog instead of a politely slowed-down
client. Inputs are random tensors shaped from the model's metadata (`GET /v2/models/m`).
Each request carries its priority (Triton `priority` 1 = high) and deadline
(`deadline_ms`); the server's answer says whether it met the deadline, and the client
checks again with its own clock.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

from predlat.errors import ConfigError, PredlatError
from predlat.serving import protocol
from predlat.workload.arrivals import Arrival, open_loop_workload

INPUT_VARIANTS = 8  # distinct random inputs per model, reused round-robin
_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


@dataclass(frozen=True)
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    rate: float = 100.0  # requests/s, all models together
    duration_s: float = 10.0
    arrivals: str = "poisson"
    models: tuple[str, ...] | None = None  # None: every model the server lists
    deadline_ms: float | None = None  # None: the server's default per model
    hp_frac: float = 0.0
    seed: int = 0
    max_requests: int = 1_000_000
    timeout_s: float = 10.0  # per request; also how long the end waits for stragglers
    binary: bool = True  # binary tensor data extension, else JSON tensors
    max_connections: int = 512

    def validate(self) -> None:
        if not self.rate > 0:
            raise ConfigError(f"rate must be positive, got {self.rate}")
        if not self.duration_s > 0:
            raise ConfigError(f"duration must be positive, got {self.duration_s}")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ConfigError(f"deadline must be positive, got {self.deadline_ms} ms")
        if self.max_requests < 1:
            raise ConfigError(f"max requests must be at least 1, got {self.max_requests}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout_s}")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got '{self.url}'")


@dataclass
class Sample:
    """One request as the client saw it. Times are seconds from the start of the run."""

    model: str
    high_priority: bool
    scheduled: float
    sent: float = float("nan")
    done: float = float("nan")
    status_code: int = 0  # 0: no HTTP answer (connection error, client timeout)
    error: str | None = None
    server: dict[str, Any] = field(default_factory=dict)  # the predlat_* response parameters

    @property
    def latency(self) -> float:
        return self.done - self.sent


@dataclass
class _ModelPayloads:
    """Pre-encoded request bodies: [priority][variant] -> (body, headers)."""

    bodies: dict[bool, list[tuple[bytes, dict[str, str]]]]
    next_index: int = 0

    def take(self, high: bool) -> tuple[bytes, dict[str, str]]:
        options = self.bodies[high]
        self.next_index += 1
        return options[self.next_index % len(options)]


# -- setup ------------------------------------------------------------------------------


async def _get_json(client: httpx.AsyncClient, method: str, path: str) -> Any:
    try:
        response = await client.request(method, path)
    except httpx.HTTPError as exc:
        raise PredlatError(f"cannot reach the server at {client.base_url}: {exc}") from None
    if response.status_code != 200:
        raise PredlatError(f"{method} {path} answered {response.status_code}: {response.text}")
    return response.json()


async def _served_models(client: httpx.AsyncClient, wanted: Sequence[str] | None) -> list[str]:
    index = await _get_json(client, "POST", "/v2/repository/index")
    served = [entry["name"] for entry in index]
    if wanted is None:
        if not served:
            raise PredlatError("the server lists no models; pass --models")
        return served
    missing = [m for m in wanted if m not in served]
    if missing:
        raise PredlatError(
            f"server does not serve {', '.join(missing)} (it serves: {', '.join(served)})"
        )
    return list(wanted)


def random_inputs(metadata: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One row of random data for every input of a model's v2 metadata; dynamic
    dimensions (-1) become 1."""
    feeds: dict[str, np.ndarray] = {}
    for spec in metadata["inputs"]:
        dtype = protocol.V2_TO_NUMPY.get(spec["datatype"])
        if dtype is None:
            raise PredlatError(
                f"input {spec['name']} has datatype {spec['datatype']}, which "
                "the load generator cannot fill"
            )
        shape = [1] + [d if d > 0 else 1 for d in spec["shape"][1:]]
        if dtype.kind in "iu":
            feeds[spec["name"]] = rng.integers(0, 100, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec["name"]] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
    return feeds


async def _payloads(
    client: httpx.AsyncClient, model: str, config: LoadConfig, rng: np.random.Generator
) -> _ModelPayloads:
    metadata = await _get_json(client, "GET", f"/v2/models/{model}")
    variants = [random_inputs(metadata, rng) for _ in range(INPUT_VARIANTS)]
    bodies: dict[bool, list[tuple[bytes, dict[str, str]]]] = {}
    for high in (False, True):
        params: dict[str, Any] = {"priority": 1} if high else {}
        if config.deadline_ms is not None:
            params["deadline_ms"] = config.deadline_ms
        bodies[high] = [
            protocol.encode_infer_request(
                v, binary=config.binary, parameters=params, binary_outputs=config.binary
            )
            for v in variants
        ]
    return _ModelPayloads(bodies)


# -- the run ----------------------------------------------------------------------------


async def _send(
    client: httpx.AsyncClient,
    payload: tuple[bytes, dict[str, str]],
    sample: Sample,
    t0: float,
    on_done: Callable[[Sample], None],
) -> None:
    body, headers = payload
    sample.sent = time.perf_counter() - t0
    try:
        response = await client.post(
            f"/v2/models/{sample.model}/infer", content=body, headers=headers
        )
        sample.done = time.perf_counter() - t0
        sample.status_code = response.status_code
        _read_answer(sample, response)
    except httpx.HTTPError as exc:
        sample.done = time.perf_counter() - t0
        sample.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    on_done(sample)


def _read_answer(sample: Sample, response: httpx.Response) -> None:
    content = response.content
    if response.status_code != 200:
        try:
            sample.error = str(json.loads(content)["error"])
        except (ValueError, KeyError, TypeError):
            sample.error = content[:200].decode(errors="replace")
        return
    length = response.headers.get(protocol.HEADER_LENGTH)
    header = content if length is None else content[: int(length)]
    try:
        params = json.loads(header).get("parameters", {})
    except ValueError:
        sample.error = "malformed response"
        return
    sample.server = {k: v for k, v in params.items() if k.startswith("predlat_")}


async def run_load(
    config: LoadConfig,
    on_done: Callable[[Sample], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Drive the server with the configured workload; return the summary (results.json)."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    limits = httpx.Limits(
        max_connections=config.max_connections, max_keepalive_connections=config.max_connections
    )
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=_SOCKET_OPTIONS)
    async with httpx.AsyncClient(
        base_url=config.url, transport=transport, timeout=config.timeout_s
    ) as client:
        models = await _served_models(client, config.models)
        payloads = {m: await _payloads(client, m, config, rng) for m in models}
        arrivals = open_loop_workload(
            {m: config.rate / len(models) for m in models},
            config.duration_s,
            config.seed,
            config.arrivals,
            config.hp_frac,
        )[: config.max_requests]
        if on_start:
            on_start(len(arrivals))
        samples, wall = await _drive(client, arrivals, payloads, config, on_done or _ignore)
    return summarize(samples, config, models, wall)


def _ignore(sample: Sample) -> None:
    return None


async def _drive(
    client: httpx.AsyncClient,
    arrivals: Sequence[Arrival],
    payloads: dict[str, _ModelPayloads],
    config: LoadConfig,
    on_done: Callable[[Sample], None],
) -> tuple[list[Sample], float]:
    samples: list[Sample] = []
    tasks: list[asyncio.Task] = []
    t0 = time.perf_counter()
    for arrival in arrivals:
        delay = arrival.time - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        sample = Sample(arrival.model, arrival.high_priority, arrival.time)
        samples.append(sample)
        payload = payloads[arrival.model].take(arrival.high_priority)
        tasks.append(asyncio.create_task(_send(client, payload, sample, t0, on_done)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=config.timeout_s + 1.0)
        for task in pending:  # the client's own timeout normally fires first
            task.cancel()
        for sample in samples:
            if sample.status_code == 0 and sample.error is None:
                sample.error = "no answer before the run's end"
    return samples, time.perf_counter() - t0


# -- summary ----------------------------------------------------------------------------


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not len(values):
        return {"p50": None, "p99": None, "mean": None, "max": None}
    array = np.asarray(values, dtype=float) * 1e3
    return {
        "p50": round(float(np.percentile(array, 50)), 4),
        "p99": round(float(np.percentile(array, 99)), 4),
        "mean": round(float(array.mean()), 4),
        "max": round(float(array.max()), 4),
    }


def _deadline_ms(sample: Sample, config: LoadConfig) -> float | None:
    if config.deadline_ms is not None:
        return config.deadline_ms
    return sample.server.get("predlat_deadline_ms")


def _group(samples: Sequence[Sample], config: LoadConfig) -> dict[str, Any]:
    ok = [s for s in samples if s.status_code == 200]
    statuses = Counter(s.server.get("predlat_status") for s in ok)
    on_time = 0
    for s in ok:
        deadline = _deadline_ms(s, config)
        on_time += deadline is not None and s.latency * 1e3 <= deadline
    sent = len(samples)
    return {
        "sent": sent,
        "ok": len(ok),
        "met": statuses.get("met", 0),
        "missed": statuses.get("missed", 0),
        "refused_or_failed": sent - len(ok),
        "deadline_satisfaction_server": round(statuses.get("met", 0) / sent, 4) if sent else None,
        "deadline_satisfaction_client": round(on_time / sent, 4) if sent else None,
        "latency_ms": _percentiles([s.latency for s in ok]),
    }


def summarize(
    samples: Sequence[Sample], config: LoadConfig, models: Sequence[str], wall_s: float
) -> dict[str, Any]:
    ok = [s for s in samples if s.status_code == 200]
    sent_times = [s.sent for s in samples if not math.isnan(s.sent)]
    span = (max(sent_times) - min(sent_times)) if len(sent_times) > 1 else 0.0
    with_times = [s for s in ok if "predlat_latency_ms" in s.server]
    codes = Counter(str(s.status_code) for s in samples)
    errors = Counter(s.error for s in samples if s.error)
    return {
        "config": asdict(config),
        "models": list(models),
        "requests": len(samples),
        "wall_s": round(wall_s, 3),
        "offered_rate_rps": round(len(sent_times) / span, 3) if span > 0 else None,
        "achieved_rate_rps": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "latency_ms": _percentiles([s.latency for s in ok]),
        "send_lag_ms": _percentiles(
            [s.sent - s.scheduled for s in samples if not math.isnan(s.sent)]
        ),
        # End-to-end minus the runtime's own arrival-to-end time: HTTP, parsing, encoding.
        "server_overhead_ms": _percentiles(
            [s.latency - s.server["predlat_latency_ms"] / 1e3 for s in with_times]
        ),
        # End-to-end minus the batch's execution time (includes queueing for a slot).
        "overhead_vs_compute_ms": _percentiles(
            [s.latency - s.server["predlat_compute_ms"] / 1e3 for s in with_times]
        ),
        "by_priority": {
            "high": _group([s for s in samples if s.high_priority], config),
            "low": _group([s for s in samples if not s.high_priority], config),
        },
        "by_model": {m: _group([s for s in samples if s.model == m], config) for m in models},
        "status_codes": dict(sorted(codes.items())),
        "errors": dict(errors.most_common(10)),
    }


def run(config: LoadConfig, progress: bool = True) -> dict[str, Any]:
    """Run the load from synchronous code, with a progress bar when asked."""
    if not progress:
        return asyncio.run(run_load(config))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("requests", total=None)

        def started(total: int) -> None:
            bar.update(task, total=total)

        def done(sample: Sample) -> None:
            bar.advance(task)

        return asyncio.run(run_load(config, on_done=done, on_start=started))
