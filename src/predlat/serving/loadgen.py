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
import gc
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from predlat.errors import ConfigError, PredlatError
from predlat.serving import protocol
from predlat.serving.admission import DEADLINE_HEADER, PRIORITY_HEADER
from predlat.serving.http_client import (
    RawHttpClient,
    RawResponse,
    Request,
    encode_expecting,
    encode_request,
)
from predlat.serving.load_report import server_counts, server_delta, summarize
from predlat.workload.arrivals import Arrival, open_loop_workload, replay_workload

INPUT_VARIANTS = 8  # distinct random inputs per model, reused round-robin
# Bodies from this size wait for the server's 100 Continue (http_client.py): a refusal
# from the headers alone then costs neither side a body. 0: never.
EXPECT_CONTINUE_BYTES = 64 * 1024
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
    replay: str | None = None  # a CSV/Parquet of (time, model[, high_priority]) to replay
    expect_continue_bytes: int = EXPECT_CONTINUE_BYTES

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
        if self.expect_continue_bytes < 0:
            size = self.expect_continue_bytes
            raise ConfigError(f"expect-continue size must be >= 0, got {size}")
        if not self.url.startswith("http://"):
            raise ConfigError(f"url must start with http://, got '{self.url}'")


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
    """Pre-encoded HTTP requests: [priority][variant] -> the request."""

    bodies: dict[bool, list[Request]]
    next_index: int = 0

    def take(self, high: bool) -> Request:
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
    host = client.base_url.netloc.decode()
    bodies: dict[bool, list[Request]] = {}
    expect_from = config.expect_continue_bytes or float("inf")
    for high in (False, True):
        params: dict[str, Any] = {"priority": 1} if high else {}
        if config.deadline_ms is not None:
            params["deadline_ms"] = config.deadline_ms
        bodies[high] = []
        for v in variants:
            body, headers = protocol.encode_infer_request(
                v, binary=config.binary, parameters=params, binary_outputs=config.binary
            )
            if config.deadline_ms is not None:  # lets the server shed at the door
                headers[DEADLINE_HEADER] = str(config.deadline_ms)
            if high:
                headers[PRIORITY_HEADER] = "1"
            path = f"/v2/models/{model}/infer"
            encode = encode_expecting if len(body) >= expect_from else encode_request
            bodies[high].append(encode("POST", path, host, body, headers))
    return _ModelPayloads(bodies)


# -- the run ----------------------------------------------------------------------------


async def _send(
    client: RawHttpClient,
    request: Request,
    sample: Sample,
    t0: float,
    on_done: Callable[[Sample], None],
) -> None:
    sample.sent = time.perf_counter() - t0
    try:
        response = await client.send(request)
        sample.done = time.perf_counter() - t0
        sample.status_code = response.status
        _read_answer(sample, response)
    except (OSError, TimeoutError) as exc:  # ConnectionError is an OSError
        sample.done = time.perf_counter() - t0
        sample.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    on_done(sample)


def _read_answer(sample: Sample, response: RawResponse) -> None:
    content = response.body
    if response.status != 200:
        try:
            sample.error = str(orjson.loads(content)["error"])
        except (ValueError, KeyError, TypeError):
            sample.error = content[:200].decode(errors="replace")
        return
    length = response.headers.get(protocol.HEADER_LENGTH.lower())
    header = content if length is None else content[: int(length)]
    try:
        params = orjson.loads(header).get("parameters", {})
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
    async with httpx.AsyncClient(base_url=config.url, timeout=config.timeout_s) as setup:
        models = await _served_models(setup, config.models)
        payloads = {m: await _payloads(setup, m, config, rng) for m in models}
        arrivals = _arrivals(config, models)
        if on_start:
            on_start(len(arrivals))
        before = await _server_counts(setup)
        client = RawHttpClient(config.url, config.max_connections, config.timeout_s)
        try:
            samples, wall = await _drive(client, arrivals, payloads, config, on_done or _ignore)
        finally:
            client.close()
        after = await _server_counts(setup)
    results = summarize(samples, config, models, wall)
    if before is not None and after is not None:
        results["server"] = server_delta(before, after)
    return results


def _arrivals(config: LoadConfig, models: Sequence[str]) -> list[Arrival]:
    if config.replay is None:
        arrivals = open_loop_workload(
            {m: config.rate / len(models) for m in models},
            config.duration_s,
            config.seed,
            config.arrivals,
            config.hp_frac,
        )
    else:
        arrivals = replay_workload(Path(config.replay))
        unknown = sorted({a.model for a in arrivals} - set(models))
        if unknown:
            raise PredlatError(f"replay names models not served: {', '.join(unknown)}")
        if arrivals:  # timestamps may be absolute (a log): start at the first
            first = arrivals[0].time
            arrivals = [Arrival(a.time - first, a.model, a.high_priority) for a in arrivals]
    return arrivals[: config.max_requests]


async def _server_counts(client: httpx.AsyncClient) -> dict[str, float] | None:
    """The server's own counters, or None when it has no predlat /metrics."""
    try:
        response = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return server_counts(response.text)
    except ValueError:  # not Prometheus text: a server without predlat's metrics
        return None


def _ignore(sample: Sample) -> None:
    return None


async def _drive(
    client: RawHttpClient,
    arrivals: Sequence[Arrival],
    payloads: dict[str, _ModelPayloads],
    config: LoadConfig,
    on_done: Callable[[Sample], None],
) -> tuple[list[Sample], float]:
    samples: list[Sample] = []
    waits: list[asyncio.Future] = []
    # No collection while sending: a full one over thousands of samples stalls the
    # schedule for milliseconds (reference counting still frees nearly everything).
    gc.freeze()
    gc.disable()
    t0 = time.perf_counter()
    try:
        for arrival in arrivals:
            await _until(t0 + arrival.time)
            sample = Sample(arrival.model, arrival.high_priority, arrival.time)
            samples.append(sample)
            request = payloads[arrival.model].take(arrival.high_priority)
            waits.append(_start(client, request, sample, t0, on_done))
    finally:
        gc.enable()
        gc.unfreeze()
    if waits:
        _, pending = await asyncio.wait(waits, timeout=config.timeout_s + 1.0)
        for wait in pending:  # the client's own timeout normally fires first
            wait.cancel()
        for sample in samples:
            if sample.status_code == 0 and sample.error is None:
                sample.error = "no answer before the run's end"
    return samples, time.perf_counter() - t0


def _start(
    client: RawHttpClient,
    request: Request,
    sample: Sample,
    t0: float,
    on_done: Callable[[Sample], None],
) -> asyncio.Future:
    """Send now on an idle connection (no task: the request leaves on schedule), else in
    a task that waits for or opens a connection."""
    sent = time.perf_counter() - t0
    answer = client.send_now(request)
    if answer is None:
        return asyncio.ensure_future(_send(client, request, sample, t0, on_done))
    sample.sent = sent

    def finish(done: asyncio.Future) -> None:
        sample.done = time.perf_counter() - t0
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            response = done.result()
            sample.status_code = response.status
            _read_answer(sample, response)
        else:
            sample.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        on_done(sample)

    answer.add_done_callback(finish)
    return answer


async def _until(due: float) -> None:
    """Sleep to `due` (perf_counter) on the loop's timers. No busy wait for the last
    fraction of a millisecond: the client often shares the machine's cores with the
    server it measures, and a spinning client would slow that server down."""
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def run(config: LoadConfig, progress: bool = True) -> dict[str, Any]:
    """Run the load from synchronous code, with a progress bar when asked."""
    if not progress:
        return _run_async(run_load(config))
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

        return _run_async(run_load(config, on_done=done, on_start=started))


def _run_async(coroutine: Any) -> Any:
    """uvloop when installed: its loop keeps the send schedule with less lag."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
