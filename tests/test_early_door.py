"""Door refusals answered from the HTTP parser's callback (early.py): the same answer and
metrics as the app's, no handler run, and the connection left as after any answer."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from predlat.serving.app import ServerConfig, create_app
from predlat.serving.early import EarlyDoor
from predlat.serving.server import BackgroundServer
from test_serving_door import body, samples

INFER = "/v2/models/tiny/infer"


def refuse_all(model, priority, waiting) -> float:
    return 60.0  # seconds: longer than any deadline here


@pytest.fixture
def refusing(runtime, spec):
    app = create_app(runtime, [spec], ServerConfig({"tiny": 0.5}), forecast=refuse_all)
    service = app.state.service

    async def never(*args: object) -> None:
        raise AssertionError("the app's handler ran for a request refused early")

    service._infer = never
    with BackgroundServer(app) as server:
        yield server, service


def raw_exchange(url: str, payload: bytes, answers: int) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        got = b""
        while got.count(b"HTTP/1.1 ") < answers or not got.endswith((b"}", b"true}")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


def request(path: str, data: bytes = b"", extra: str = "") -> bytes:
    method = "POST" if data else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    return head.encode() + data


def test_refusal_is_answered_without_the_app_and_counted_once(refusing):
    server, _ = refusing
    with httpx.Client(base_url=server.url, timeout=10) as client:
        answer = client.post(INFER, content=body(), headers={"predlat-deadline-ms": "100"})
        assert answer.status_code == 503
        assert answer.json()["reason"] == "deadline_below_forecast"
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["server-timing"].startswith("server;dur=")  # timed here too
        refusals = samples(client, "predlat_refusals_total")
        responses = samples(client, "predlat_http_responses_total")
        refusal_times = samples(client, "predlat_refusal_latency_seconds_count")
    assert sum(refusals.values()) == 1
    assert sum(v for k, v in responses.items() if ("code", "503") in k) == 1
    assert sum(refusal_times.values()) == 1


def test_body_after_an_early_refusal_is_dropped_and_the_connection_goes_on(refusing):
    server, _ = refusing
    payload = request(INFER, body(rows=300)) + request("/v2/health/live")
    got = raw_exchange(server.url, payload, answers=2)
    assert got.count(b"HTTP/1.1 503") == 1
    assert got.count(b"HTTP/1.1 200") == 1 and got.endswith(b'{"live":true}')


def test_held_back_body_refusal_closes_the_connection(refusing):
    server, _ = refusing
    head = request(INFER, body(), "Expect: 100-continue\r\n")
    head = head[: head.index(b"\r\n\r\n") + 4]  # the body held back
    got = raw_exchange(server.url, head, answers=1)  # ends: the server closed it
    assert got.startswith(b"HTTP/1.1 503") and b"connection: close" in got.lower()


def test_what_the_door_cannot_judge_early_goes_to_the_app(runtime, spec):
    app = create_app(runtime, [spec], ServerConfig({"tiny": 0.5}))
    door = EarlyDoor(app.state.service)
    now = time.perf_counter()
    assert door.refusal("POST", INFER, {}, now) is None  # no forecast: the door lets it in
    assert door.refusal("POST", "/v2/models/nope/infer", {}, now) is None  # app's 404
    assert door.refusal("GET", INFER, {}, now) is None
    assert door.refusal("POST", "/v2/models/tiny", {}, now) is None
    app.state.service.begin_shutdown()
    closing = door.refusal("POST", "/v2/models/tiny/versions/1/infer", {}, now)
    assert closing is not None and closing.status_code == 503


def test_admitted_request_is_served_by_the_app(runtime, spec):
    app = create_app(runtime, [spec], ServerConfig({"tiny": 0.5}))
    with BackgroundServer(app) as server:
        answer = httpx.post(server.url + INFER, content=body(), timeout=10)
    assert answer.status_code == 200 and len(runtime.submitted) == 1
