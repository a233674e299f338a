"""The HTTP front end: Open Inference Protocol v2 endpoints on top of a Runtime.

Every infer request from every client goes through the one Runtime: batched across
clients, co-located with other models' batches, answered on time or refused at once. The
event loop never blocks. A runtime not started yet is started on the app's event loop (its
controller runs as loop callbacks, so a handler resumes with no thread hop); one started
on a control thread wakes handlers through `call_soon_threadsafe`. Each answer carries a
Server-Timing header: the time from the request's first byte to its answer being ready.

Priorities: Triton's `priority` parameter (1 = highest, larger = lower, 0 = the model's
default) maps onto predlat's two levels as 1 -> HIGH, anything else (0, 2, 3, ...) -> LOW.
Deadlines: `deadline_ms`, else Triton's `timeout` (microseconds), else the model's default,
counted from the request's arrival at the server (reading and decoding count). The door
(admission.py) refuses what cannot be served before the body is read; big JSON bodies are
decoded off the loop (decode.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from predlat.devices.priority import lower_device_priority
from predlat.errors import PredlatError, UnknownModelError
from predlat.models.spec import ModelSpec
from predlat.scheduling.outcome import RequestOutcome
from predlat.scheduling.request import Priority
from predlat.serving import protocol
from predlat.serving.admission import (
    DELAY,
    SHUTTING_DOWN,
    Door,
    Forecast,
    Refusal,
    answered_after,
    header_deadline,
    header_priority,
    is_deadline_rejection,
    late_for_decode,
    passed_before_submit,
)
from predlat.serving.answers import (
    await_outcome,
    error_response,
    http_answer,
    http_error,
    json_response,
    priority_from_level,
    refusal_response,
    stamp_server_timing,
)
from predlat.serving.backlog import BacklogForecast, OnlineQuantile
from predlat.serving.body import body_held_back, content_length, read_body
from predlat.serving.catalog import Catalog, load_parameters
from predlat.serving.config import (  # noqa: F401  (ServerConfig: the public name)
    DEFAULT_MAX_BODY_BYTES,
    HostableRuntime,
    RuntimeLike,
    ServerConfig,
    ServingState,
)
from predlat.serving.decode import OffLoopDecoder, parse_header_length
from predlat.serving.metrics import ServingMetrics
from predlat.serving.protocol import ARRIVED_SCOPE_KEY, HEADER_LENGTH, InferRequest, ProtocolError

FRAMEWORKS = ("starlette", "fastapi")
RESPONSE_SHARE = 0.2  # the most of a deadline reserved for the response path
CLOSING = Refusal(503, SHUTTING_DOWN, "server is shutting down")


class InferenceService:
    """The endpoints' logic, bound to one runtime, its models, config and metrics."""

    def __init__(
        self,
        runtime: RuntimeLike,
        specs: Sequence[ModelSpec],
        config: ServerConfig,
        metrics: ServingMetrics,
        forecast: BacklogForecast | Forecast | None = None,
    ) -> None:
        """`forecast`: the door's forecast of a new request's time to answer (a
        BacklogForecast learns from the answers); None refuses only on the budget."""
        self.runtime = runtime
        self.specs = {s.name: s for s in specs}
        self.config = config
        self.metrics = metrics
        self.state = ServingState()
        self.door = Door(config.door, forecast)
        metrics.watch_door(lambda: self.door.scale, lambda: self.door.loop_lag.value)
        # Seconds from a batch's end to its answer being ready (p99 of recent answers).
        self.response_path = OnlineQuantile(0.99, initial=0.0)
        self.companions: list[Any] = []  # front ends sharing this loop (start_here/stop_here)
        # Triton's pending count: requests awaiting execution (the scheduler's queues).
        metrics.triton.pending = metrics.queue_lengths or (lambda: dict(self.door.pending))
        self.catalog = Catalog(specs, config.models, config.repository, config.versions)
        self.decoder = OffLoopDecoder(
            config.decode_processes, config.offload_bytes, config.compute_nice
        )
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
        spec = self._model(request)
        return json_response(protocol.model_metadata(spec, self.catalog.version(spec.name)))

    async def model_ready(self, request: Request) -> Response:
        spec = self._model(request)
        ready = self.state.ready and self.state.accepting
        return json_response({"name": spec.name, "ready": ready}, 200 if ready else 503)

    async def repository_index(self, request: Request) -> Response:
        """Triton's model repository index: every model, with its state."""
        return json_response(self.catalog.index(self.state.ready))

    async def repository_load(self, request: Request) -> Response:
        body = await request.body()
        self.catalog.load(request.path_params["model"], load_parameters(body))
        return json_response({})

    async def repository_unload(self, request: Request) -> Response:
        self.catalog.unload(request.path_params["model"])
        return json_response({})

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def _model(self, request: Request) -> ModelSpec:
        """The model a path names, or a 404 ProtocolError."""
        params = request.path_params
        return self.catalog.get(params["model"], params.get("version"))

    # -- inference -------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        # The deadline clock starts at the request's first byte (server.py), not at submit.
        arrived = request.scope.get(ARRIVED_SCOPE_KEY) or time.perf_counter()
        try:
            response, runtime_s = await self._infer(request, arrived)
        except ProtocolError as exc:
            response, runtime_s = error_response(exc.status, exc.message), None
        except Exception as exc:  # one bad request must never take the server down
            message = f"internal error: {type(exc).__name__}: {exc}"
            response, runtime_s = error_response(500, message), None
        elapsed = time.perf_counter() - arrived
        stamp_server_timing(response, elapsed)
        self.metrics.observe_http("infer", response.status_code, elapsed)
        if runtime_s is not None:
            self.metrics.server_overhead.observe(max(0.0, elapsed - runtime_s))
        return response

    def refuse(self, model: str, refusal: Refusal, close: bool = False) -> Response:
        self.metrics.observe_refusal(model, refusal.reason)
        return refusal_response(refusal, close)

    async def _infer(self, request: Request, arrived: float) -> tuple[Response, float | None]:
        spec = self._model(request)
        terms = self._door_terms(spec, request.headers)
        ticket = self.door.admit(*terms) if self.state.accepting else CLOSING
        if isinstance(ticket, Refusal):  # the body is never read (nor sent, if held back)
            return self.refuse(spec.name, ticket, body_held_back(request.headers)), None
        door_deadline = terms[1]
        self.metrics.inflight.inc()
        answered_s: float | None = None  # what the door learns from (see Door.leave)
        try:
            body = await read_body(request, self.config.max_body_bytes)
            self.decoder.observe_read(len(body), time.perf_counter() - arrived)
            length = parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
            waited_s, decode_s = (
                time.perf_counter() - arrived,
                self.decoder.forecast_wait(len(body)),
            )
            late = late_for_decode(header_deadline(request.headers), waited_s, decode_s)
            if late is not None:
                answered_s = door_deadline  # it would have been late: at least that
                return self.refuse(spec.name, late), None
            decoded = await self.decoder.decode(body, length, spec)
            answer = await self._run(spec, decoded, arrived, time.perf_counter() - arrived)
            answered_s = answered_after(answer[0].status_code, arrived, door_deadline)
            return answer
        finally:
            self.door.leave(ticket, answered_s)
            self.metrics.inflight.dec()

    def pre_body_refusal(self, spec: ModelSpec, headers: Mapping[str, str]) -> Refusal | None:
        """What `_infer` refuses before the body, judged without letting anything in
        (the early door: early.py)."""
        if not self.state.accepting:
            return CLOSING
        return self.door.check(*self._door_terms(spec, headers))

    def _door_terms(self, spec: ModelSpec, headers: Mapping[str, str]) -> tuple:
        """The door's terms for a request, from its headers alone: (model, deadline,
        queue cap, forecast read and decode wait, priority)."""
        deadline = header_deadline(headers) or self.config.deadline_for(spec.name)
        wait_s = self.decoder.forecast_wait(content_length(headers), reading=True)
        max_queue = self.config.settings(spec.name).max_queue_size
        return spec.name, deadline, max_queue, wait_s, header_priority(headers)

    async def _run(
        self, spec: ModelSpec, decoded: InferRequest, arrived: float, input_s: float
    ) -> tuple[Response, float | None]:
        result = await self.execute(spec, decoded, arrived)
        if isinstance(result, Refusal):
            return refusal_response(result), None
        priority = self.priority_of(spec, decoded)
        encoding = time.perf_counter()
        answer = http_answer(decoded, result, self.deadline_of(spec, decoded), priority)
        self.observe_answer(spec.name, arrived, input_s, encoding, result)
        return answer

    def observe_answer(
        self, model: str, arrived: float, input_s: float, encoding: float, result: RequestOutcome
    ) -> float:
        """An answer's server-side times, either transport: Triton's input/output split
        and the response path the scheduler plans with. Returns when it was done."""
        done = time.perf_counter()
        if result.end is not None:
            self.response_path.add(done - result.end)
        self.metrics.observe_request(model, done - arrived, input_s, done - encoding)
        return done

    def deadline_of(self, spec: ModelSpec, decoded: InferRequest) -> float:
        return self.config.request_deadline(spec.name, decoded.deadline_s)

    def priority_of(self, spec: ModelSpec, decoded: InferRequest) -> Priority:
        level = decoded.priority_level or self.config.settings(spec.name).default_priority_level
        return priority_from_level(level)

    async def execute(
        self, spec: ModelSpec, decoded: InferRequest, arrived: float
    ) -> RequestOutcome | Refusal:
        """Run a decoded request (any transport): its outcome, or why it was refused
        before reaching the scheduler."""
        refusal = self.config.limit_refusal(spec.name, decoded.rows, decoded.priority_level)
        if refusal is not None:
            return refusal
        deadline_s = self.deadline_of(spec, decoded)
        priority = self.priority_of(spec, decoded)
        waited_s = time.perf_counter() - arrived
        if waited_s >= deadline_s:
            refusal = passed_before_submit(waited_s, deadline_s)
            self.metrics.observe_refusal(spec.name, refusal.reason)
            return refusal
        action = self.config.action_for(spec.name, decoded.timeout_action)
        # The scheduler plans batch ends; the answer goes out after the response path.
        planned_s = deadline_s - min(self.response_path.value, RESPONSE_SHARE * deadline_s)
        try:
            outcome = await self._submit(spec.name, decoded, planned_s, priority, waited_s)
            if action == DELAY and outcome.status == "rejected":
                outcome = await self._delay(spec.name, decoded, outcome, deadline_s, arrived)
        except UnknownModelError as exc:
            return Refusal(404, "unknown_model", str(exc))
        except PredlatError as exc:
            return Refusal(400, "bad_request", str(exc))
        if outcome.status == "missed":
            self.metrics.observe_late(spec.name)
        return outcome

    async def _delay(
        self,
        model: str,
        decoded: InferRequest,
        refused: RequestOutcome,
        deadline_s: float,
        arrived: float,
    ) -> RequestOutcome:
        """Triton's DELAY: work the scheduler refused as late runs anyway, behind on-time
        work (low priority, relaxed deadline), and its answer counts as late."""
        if not is_deadline_rejection(refused):
            return refused
        self.metrics.observe_delayed(model)
        relaxed = deadline_s * self.config.door.delay_factor
        waited_s = time.perf_counter() - arrived
        outcome = await self._submit(model, decoded, relaxed, Priority.LOW, waited_s)
        late = outcome.end is not None and outcome.end - outcome.arrival > deadline_s
        if outcome.status == "met" and late:
            outcome.status = "missed"
        return outcome

    async def _submit(
        self,
        model: str,
        decoded: InferRequest,
        deadline_s: float,
        priority: Priority,
        waited_s: float,
    ) -> RequestOutcome:
        future = self.runtime.submit(
            model, decoded.inputs, deadline_s=deadline_s, priority=priority, waited_s=waited_s
        )
        return await await_outcome(future)


# -- app factory ---------------------------------------------------------------------


def _routes(service: InferenceService) -> list[tuple[str, Callable, list[str]]]:
    s, model, version = service, "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [  # infer first: routes are matched in order, and it is the hot path
        (f"{model}/infer", s.infer, ["POST"]),
        (f"{version}/infer", s.infer, ["POST"]),
        ("/v2", s.server_metadata, ["GET"]),
        ("/v2/health/live", s.live, ["GET"]),
        ("/v2/health/ready", s.ready, ["GET"]),
        ("/v2/repository/index", s.repository_index, ["GET", "POST"]),
        ("/v2/repository/models/{model}/load", s.repository_load, ["POST"]),
        ("/v2/repository/models/{model}/unload", s.repository_unload, ["POST"]),
        (model, s.model_metadata, ["GET"]),
        (version, s.model_metadata, ["GET"]),
        (f"{model}/ready", s.model_ready, ["GET"]),
        (f"{version}/ready", s.model_ready, ["GET"]),
        ("/metrics", s.metrics_text, ["GET"]),
    ]


def create_app(
    runtime: RuntimeLike,
    specs: Sequence[ModelSpec],
    config: ServerConfig | None = None,
    metrics: ServingMetrics | None = None,
    framework: str = "starlette",
    forecast: BacklogForecast | Forecast | None = None,
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
    service = InferenceService(runtime, specs, config or ServerConfig(), metrics, forecast)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hosted = None
        if getattr(runtime, "started", True) is False:
            hosted = cast(HostableRuntime, runtime)
            hosted.start(asyncio.get_running_loop())
        lower_device_priority(getattr(runtime, "device", None), service.config.compute_nice)
        await asyncio.to_thread(service.decoder.start)
        service.door.loop_lag.start(asyncio.get_running_loop())
        for companion in service.companions:  # the gRPC front end, on this loop
            await companion.start_here()
        service.state.ready = True
        yield
        service.begin_shutdown()
        service.door.loop_lag.stop()
        for companion in service.companions:
            await companion.stop_here(service.config.drain_timeout_s)
        if hosted is not None:
            await hosted.stop_async(drain=True, timeout=service.config.drain_timeout_s)
        service.decoder.close()

    handlers = {HTTPException: http_error, ProtocolError: http_error}
    if framework == "fastapi":
        from fastapi import FastAPI  # only when asked: FastAPI adds per-request cost

        no_docs = {"openapi_url": None, "docs_url": None, "redoc_url": None}
        app = FastAPI(lifespan=lifespan, exception_handlers=handlers, **no_docs)
        for path, endpoint, methods in _routes(service):
            app.add_api_route(path, endpoint, methods=methods, include_in_schema=False)
    else:
        routes = [Route(p, e, methods=m) for p, e, m in _routes(service)]
        app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.service = service
    return app
