"""The HTTP front end: Open Inference Protocol v2 endpoints on top of a Runtime.

Every infer request from every client goes through the one Runtime, so requests are
batched across clients, co-located with other models' batches, and answered on time or
refused at once. The event loop never blocks. A runtime not started yet is started by the
app on its own event loop (the runtime's controller then runs as loop callbacks): a
request's future resolves on the loop thread and its handler resumes with no thread hop.
A runtime the caller started on a control thread resolves futures there, and wakes the
handler through `call_soon_threadsafe`.

Priorities: Triton's `priority` parameter (1 = highest, larger = lower, 0 = the model's
default) maps onto predlat's two levels as 1 -> HIGH, anything else (0, 2, 3, ...) -> LOW.
Deadlines: `deadline_ms`, else Triton's `timeout` (microseconds), else the server's default
for the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from predlat.errors import PredlatError, UnknownModelError
from predlat.models.spec import ModelSpec
from predlat.scheduling.outcome import RequestOutcome
from predlat.scheduling.request import Priority
from predlat.serving import protocol
from predlat.serving.metrics import ServingMetrics
from predlat.serving.protocol import HEADER_LENGTH, InferRequest, ProtocolError
from predlat.traces.records import BatchRecord

FRAMEWORKS = ("starlette", "fastapi")
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
JSON_TYPE = "application/json"


class RuntimeLike(Protocol):
    """What the server needs of a Runtime (predlat.runtime.runtime.Runtime)."""

    def submit(
        self,
        model: str,
        inputs: dict[str, np.ndarray] | None,
        *,
        deadline_s: float,
        priority: Priority = Priority.LOW,
    ) -> Future: ...

    def add_listener(self, on_outcome: Callable[[Any], None]) -> None: ...

    def add_batch_listener(self, on_batch: Callable[[BatchRecord, float], None]) -> None: ...


class HostableRuntime(RuntimeLike, Protocol):
    """A runtime the app can start on its event loop and stop when serving ends."""

    @property
    def started(self) -> bool: ...

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None: ...

    async def stop_async(self, drain: bool = True, timeout: float = 30.0) -> None: ...


@dataclass
class ServerConfig:
    """Per-server settings. `default_deadline_s` maps model -> seconds (used when a request
    names no deadline); models missing from it use `fallback_deadline_s`.
    `drain_timeout_s`: at shutdown, how long a runtime the app started may take to finish
    its queued and running work."""

    default_deadline_s: Mapping[str, float] = field(default_factory=dict)
    fallback_deadline_s: float = 0.1
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_timeout_s: float = 30.0

    def deadline_for(self, model: str) -> float:
        return self.default_deadline_s.get(model, self.fallback_deadline_s)


@dataclass
class ServingState:
    """Whether the server takes new work; flipped when shutdown begins."""

    ready: bool = False
    accepting: bool = True


def priority_from_level(level: int) -> Priority:
    """Triton priority level -> predlat priority (1 is Triton's highest level)."""
    return Priority.HIGH if level == 1 else Priority.LOW


def rejection_status(reason: str | None) -> int:
    """429 when the server is overloaded (a full queue: retry later), 503 otherwise
    (the deadline cannot be met, or the server is shutting down)."""
    text = (reason or "").lower()
    return 429 if "queue" in text and "full" in text else 503


def error_response(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status_code=status, media_type=JSON_TYPE)


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":")), status_code=status, media_type=JSON_TYPE
    )


class InferenceService:
    """The endpoints' logic, bound to one runtime, its models, config and metrics."""

    def __init__(
        self,
        runtime: RuntimeLike,
        specs: Sequence[ModelSpec],
        config: ServerConfig,
        metrics: ServingMetrics,
    ) -> None:
        self.runtime = runtime
        self.specs = {s.name: s for s in specs}
        self.config = config
        self.metrics = metrics
        self.state = ServingState()
        runtime.add_listener(metrics.observe_outcome)
        runtime.add_batch_listener(metrics.observe_batch)

    def begin_shutdown(self) -> None:
        self.state.accepting = False
        self.state.ready = False

    # -- metadata and health ---------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        return json_response(protocol.server_metadata())

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.state.ready and self.state.accepting
        return json_response({"ready": ready}, 200 if ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        return json_response(protocol.model_metadata(self._model(request)))

    async def model_ready(self, request: Request) -> Response:
        spec = self._model(request)
        ready = self.state.ready and self.state.accepting
        return json_response({"name": spec.name, "ready": ready}, 200 if ready else 503)

    async def repository_index(self, request: Request) -> Response:
        """Triton's model repository index: every served model, all ready."""
        state = "READY" if self.state.ready else "UNAVAILABLE"
        return json_response(
            [{"name": n, "version": protocol.MODEL_VERSION, "state": state} for n in self.specs]
        )

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def _model(self, request: Request) -> ModelSpec:
        """The model a path names, or a 404 ProtocolError."""
        name = request.path_params["model"]
        spec = self.specs.get(name)
        if spec is None:
            served = ", ".join(self.specs) or "none"
            raise ProtocolError(f"unknown model '{name}' (served: {served})", 404)
        version = request.path_params.get("version")
        if version is not None and version != protocol.MODEL_VERSION:
            raise ProtocolError(f"model '{name}' has no version '{version}' (versions: 1)", 404)
        return spec

    # -- inference -------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        began = time.perf_counter()
        try:
            response, runtime_s = await self._infer(request)
        except ProtocolError as exc:
            response, runtime_s = error_response(exc.status, exc.message), None
        except Exception as exc:  # one bad request must never take the server down
            message = f"internal error: {type(exc).__name__}: {exc}"
            response, runtime_s = error_response(500, message), None
        elapsed = time.perf_counter() - began
        self.metrics.observe_http("infer", response.status_code, elapsed)
        if runtime_s is not None:
            self.metrics.server_overhead.observe(max(0.0, elapsed - runtime_s))
        return response

    async def _infer(self, request: Request) -> tuple[Response, float | None]:
        spec = self._model(request)
        if not self.state.accepting:
            return error_response(503, "server is shutting down"), None
        body = await self._read_body(request)
        header_length = protocol.parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
        decoded = protocol.decode_infer_request(body, header_length, spec)
        deadline_s = decoded.deadline_s or self.config.deadline_for(spec.name)
        priority = priority_from_level(decoded.priority_level)
        try:
            future = self.runtime.submit(
                spec.name, decoded.inputs, deadline_s=deadline_s, priority=priority
            )
        except UnknownModelError as exc:
            return error_response(404, str(exc)), None
        except PredlatError as exc:
            return error_response(400, str(exc)), None
        self.metrics.inflight.inc()
        try:
            outcome = await _await_outcome(future)
        finally:
            self.metrics.inflight.dec()
        return self._answer(decoded, outcome, deadline_s, priority)

    def _answer(
        self, decoded: InferRequest, outcome: RequestOutcome, deadline_s: float, priority: Priority
    ) -> tuple[Response, float | None]:
        runtime_s = None
        if outcome.end is not None:
            runtime_s = outcome.end - outcome.arrival
        if outcome.status == "rejected":
            return error_response(
                rejection_status(outcome.reason), outcome.reason or "rejected"
            ), runtime_s
        if outcome.status not in ("met", "missed") or outcome.outputs is None:
            reason = outcome.reason or "the model produced no outputs"
            return error_response(500, f"inference failed: {reason}"), runtime_s
        params = _outcome_parameters(outcome, deadline_s, priority)
        body, header_length = protocol.encode_infer_response(decoded, outcome.outputs, params)
        if header_length is None:
            return Response(body, media_type=JSON_TYPE), runtime_s
        headers = {HEADER_LENGTH: str(header_length)}
        return Response(body, media_type="application/octet-stream", headers=headers), runtime_s

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ProtocolError(f"Content-Length must be an integer, got '{declared}'")
            if int(declared) > limit:
                raise ProtocolError(_too_large(int(declared), limit), 413)
            body = await request.body()
        else:  # chunked: count as it streams in, stop at the limit
            chunks, total = [], 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise ProtocolError(_too_large(total, limit, at_least=True), 413)
                chunks.append(chunk)
            body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        return _decompress(body, encoding, limit)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    more = "at least " if at_least else ""
    return f"request body of {more}{size} bytes is over the server's limit of {limit} bytes"


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Request compression as tritonclient offers it (gzip or deflate), bounded so a
    small compressed body cannot expand past the body limit."""
    if encoding in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise ProtocolError(f"unsupported Content-Encoding '{encoding}' (gzip, deflate)", 415)
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"malformed {encoding} body: {exc}") from None
    if len(data) > limit:
        raise ProtocolError(_too_large(len(data), limit, at_least=True) + " once decompressed", 413)
    if not decompressor.eof:
        raise ProtocolError(f"truncated {encoding} body")
    return data


async def _await_outcome(future: Future) -> Any:
    """Wait for a runtime future without blocking the loop. Unlike asyncio.wrap_future,
    a cancelled handler (client gone, forced shutdown) never cancels the runtime's
    future: the runtime resolves every future exactly once, whoever still listens."""
    if future.done():  # resolved already (an immediate refusal): no thread hop needed
        return future.result()
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    waiter = loop.create_future()

    def transfer(done: Future) -> None:
        if waiter.done():
            return
        exc = done.exception()
        if exc is None:
            waiter.set_result(done.result())
        else:
            waiter.set_exception(exc)

    def on_done(done: Future) -> None:
        if threading.get_ident() == loop_thread:  # resolved on this loop: no hop
            transfer(done)
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed: nobody waits
            loop.call_soon_threadsafe(transfer, done)

    future.add_done_callback(on_done)
    return await waiter


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _outcome_parameters(
    outcome: RequestOutcome, deadline_s: float, priority: Priority
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "predlat_status": outcome.status,
        "predlat_priority": priority.name.lower(),
        "predlat_deadline_ms": _ms(deadline_s),
    }
    if outcome.start is not None and outcome.end is not None:
        params["predlat_queue_ms"] = _ms(outcome.start - outcome.arrival)
        params["predlat_compute_ms"] = _ms(outcome.end - outcome.start)
        params["predlat_latency_ms"] = _ms(outcome.end - outcome.arrival)
    if outcome.batch_size is not None:
        params["predlat_batch_size"] = outcome.batch_size
    return params


# -- app factory ---------------------------------------------------------------------


def _routes(service: InferenceService) -> list[tuple[str, Callable, list[str]]]:
    s = service
    model, version = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [  # infer first: routes are matched in order, and it is the hot path
        (f"{model}/infer", s.infer, ["POST"]),
        (f"{version}/infer", s.infer, ["POST"]),
        ("/v2", s.server_metadata, ["GET"]),
        ("/v2/health/live", s.live, ["GET"]),
        ("/v2/health/ready", s.ready, ["GET"]),
        ("/v2/repository/index", s.repository_index, ["POST"]),
        (model, s.model_metadata, ["GET"]),
        (version, s.model_metadata, ["GET"]),
        (f"{model}/ready", s.model_ready, ["GET"]),
        (f"{version}/ready", s.model_ready, ["GET"]),
        ("/metrics", s.metrics_text, ["GET"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ProtocolError):
        return error_response(exc.status, exc.message)
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    return error_response(status, f"{detail}: {request.method} {request.url.path}")


def create_app(
    runtime: RuntimeLike,
    specs: Sequence[ModelSpec],
    config: ServerConfig | None = None,
    metrics: ServingMetrics | None = None,
    framework: str = "starlette",
) -> Starlette:
    """The ASGI app. `app.state.service` is the InferenceService (state, metrics).
    A runtime not started yet (`runtime.started` False) is started on the server's event
    loop when serving begins, and drained (`stop_async(drain=True)`) once the server has
    finished the requests in flight. A runtime the caller started, the caller stops."""
    if framework not in FRAMEWORKS:
        raise PredlatError(f"unknown framework '{framework}' (choose {', '.join(FRAMEWORKS)})")
    if metrics is None:
        stats, queues = getattr(runtime, "stats", None), getattr(runtime, "queue_lengths", None)
        metrics = ServingMetrics(
            runtime_stats=stats if callable(stats) else None,
            queue_lengths=queues if callable(queues) else None,
        )
    service = InferenceService(runtime, specs, config or ServerConfig(), metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hosted = None
        if getattr(runtime, "started", True) is False:
            hosted = cast(HostableRuntime, runtime)
            hosted.start(asyncio.get_running_loop())
        service.state.ready = True
        yield
        service.begin_shutdown()
        if hosted is not None:
            await hosted.stop_async(drain=True, timeout=service.config.drain_timeout_s)

    handlers = {HTTPException: _http_error, ProtocolError: _http_error}
    if framework == "fastapi":
        from fastapi import FastAPI  # only when asked: FastAPI adds per-request cost

        app = FastAPI(
            lifespan=lifespan,
            openapi_url=None,
            docs_url=None,
            redoc_url=None,
            exception_handlers=handlers,
        )
        for path, endpoint, methods in _routes(service):
            app.add_api_route(path, endpoint, methods=methods, include_in_schema=False)
    else:
        routes = [Route(p, e, methods=m) for p, e, m in _routes(service)]
        app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.service = service
    return app
