"""Waiting for a runtime's answer from the event loop, and the predlat parameters an
answer carries."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from predlat.scheduling.outcome import RequestOutcome
from predlat.scheduling.reasons import http_status
from predlat.scheduling.request import Priority
from predlat.serving.admission import Refusal
from predlat.serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    encode_infer_response,
)

JSON_TYPE = "application/json"
# The W3C Server-Timing header (gRPC: the same in trailing metadata): the time the
# request spent in this server, so a client can tell the server's share of a latency
# from its own and the network's (browsers' dev tools and load tools read it).
SERVER_TIMING = "Server-Timing"


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def refusal_response(refusal: Refusal, close: bool = False) -> Response:
    """`close`: end the connection after the answer (a refusal before a body the client
    holds back for 100 Continue: the server cannot tell where its next request begins)."""
    doc = {"error": refusal.message, "reason": refusal.reason}
    headers = {**refusal.headers(), "Connection": "close"} if close else refusal.headers()
    return json_response(doc, refusal.status, headers)


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON_TYPE, headers=headers)


def priority_from_level(level: int) -> Priority:
    """Triton priority level -> predlat priority (1 is Triton's highest level)."""
    return Priority.HIGH if level == 1 else Priority.LOW


def rejection_status(outcome: Any) -> int:
    """The HTTP status of a rejected outcome, from its typed reason (the scheduler's
    mapping: 429 for a full queue, 503 otherwise)."""
    return http_status(getattr(outcome, "rejected_for", None))


async def await_outcome(future: Future) -> Any:
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


def server_timing(server_s: float) -> str:
    """The Server-Timing value for `server_s` seconds from the request's arrival at the
    server to its answer being ready (the metric named `server`, in ms as the header has
    it)."""
    return f"server;dur={server_s * 1e3:.3f}"


def stamp_server_timing(response: Response, server_s: float) -> None:
    response.headers[SERVER_TIMING] = server_timing(server_s)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def outcome_parameters(
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


async def http_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ProtocolError):
        return error_response(exc.status, exc.message)
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    return error_response(status, f"{detail}: {request.method} {request.url.path}")


def http_answer(
    decoded: InferRequest, outcome: RequestOutcome, deadline_s: float, priority: Priority
) -> tuple[Response, float | None]:
    """The HTTP answer to a request the runtime ran, and its runtime seconds (None if it
    never ran)."""
    runtime_s = None
    if outcome.end is not None:
        runtime_s = outcome.end - outcome.arrival
    if outcome.status == "rejected":
        return error_response(rejection_status(outcome), outcome.reason or "rejected"), runtime_s
    if outcome.status not in ("met", "missed") or outcome.outputs is None:
        reason = outcome.reason or "the model produced no outputs"
        return error_response(500, f"inference failed: {reason}"), runtime_s
    params = outcome_parameters(outcome, deadline_s, priority)
    body, header_length = encode_infer_response(decoded, outcome.outputs, params)
    if header_length is None:
        return Response(body, media_type=JSON_TYPE), runtime_s
    headers = {HEADER_LENGTH: str(header_length)}
    return Response(body, media_type="application/octet-stream", headers=headers), runtime_s
