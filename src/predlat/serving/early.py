"""Door refusals answered from the HTTP parser's callback, without an ASGI task.

A request the door refuses from its URL and headers alone (admission.py) needs nothing
from the framework: no task, no middleware, no route. uvicorn's httptools protocol
(server.py) asks `EarlyDoor` once a request's headers are parsed, and writes a refusal
straight to the connection from that callback. Under overload most infer requests end
there, so each costs the loop one short callback instead of a task that waits its turn
behind every other ready callback (a loop pass: a few milliseconds at p99 on a busy
2-core machine), and the framework's per-request work. Whatever the door lets through,
and anything it cannot judge here (unknown models, other routes), goes to the app as
before, which judges it again and counts it in flight.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from starlette.responses import Response

from predlat.serving.answers import stamp_server_timing
from predlat.serving.body import body_held_back
from predlat.serving.protocol import ARRIVED_SCOPE_KEY, ProtocolError

if TYPE_CHECKING:
    from predlat.serving.app import InferenceService

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class EarlyDoor:
    """`refusal(method, path, headers, arrived)`: the answer to a request the door
    refuses before its body, counted in the metrics as the app counts it; else None."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def refusal(
        self, method: str, path: str, headers: Mapping[str, str], arrived: float
    ) -> Response | None:
        match = INFER_PATH.fullmatch(path) if method == "POST" else None
        if match is None:
            return None
        service = self.service
        try:
            spec = service.catalog.get(match.group(1), match.group(2))
        except ProtocolError:  # unknown model or version: the app answers as usual
            return None
        refusal = service.pre_body_refusal(spec, headers)
        if refusal is None:
            return None
        response = service.refuse(spec.name, refusal, body_held_back(headers))
        elapsed = time.perf_counter() - arrived
        stamp_server_timing(response, elapsed)
        service.metrics.observe_http("infer", response.status_code, elapsed)
        return response


def httptools_protocol(door: EarlyDoor | None) -> type | None:
    """uvicorn's httptools protocol with each request's first byte stamped into its scope
    (the deadline clock and the refusal latency start there, not when a handler gets to
    run), and, given `door`, door refusals answered from the headers callback. None
    without httptools."""
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import (
            STATUS_LINE,
            HttpToolsProtocol,
            RequestResponseCycle,
        )
    except ImportError:
        return None

    class StampedHttpToolsProtocol(HttpToolsProtocol):
        _early: Response | None = None

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[ARRIVED_SCOPE_KEY] = time.perf_counter()  # type: ignore[literal-required]

        def on_headers_complete(self) -> None:
            self._early = self._door_refusal()
            try:  # builds the request's cycle, then starts it (below) unless pipelined
                super().on_headers_complete()
            finally:
                self._early = None

        def _door_refusal(self) -> Response | None:
            pipelined = self.cycle is not None and not self.cycle.response_complete
            if door is None or pipelined or b"%" in self.url:  # (escapes: the app's routes)
                return None
            method = self.parser.get_method().decode("ascii")
            path = httptools.parse_url(self.url).path.decode("ascii")
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
            return door.refusal(method, path, headers, self.scope[ARRIVED_SCOPE_KEY])

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: object) -> None:
            response, self._early = self._early, None
            if response is None:
                super()._start_asgi_task(cycle, app)  # type: ignore[arg-type]
                return
            # Answered here: the cycle is complete, so the parser drops any body that
            # follows, and the connection goes on (or closes) as after any answer.
            raw = response.raw_headers
            if any(k == b"connection" and b"close" in v.lower() for k, v in raw):
                cycle.keep_alive = False
            elif not cycle.keep_alive:
                raw = [*raw, (b"connection", b"close")]
            head = [STATUS_LINE[response.status_code]]
            for name, value in [*self.server_state.default_headers, *raw]:
                head += [name, b": ", value, b"\r\n"]
            self.transport.write(b"".join([*head, b"\r\n", response.body]))
            cycle.response_started = cycle.response_complete = True
            if not cycle.keep_alive:
                self.transport.close()
            self.on_response_complete()

    return StampedHttpToolsProtocol
