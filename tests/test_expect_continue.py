"""Bodies held back for 100 Continue: the server refuses at the door without the body
ever being sent (and closes that connection), admits with 100 Continue; the load
generator's client sends the body on 100 Continue (or, from a server that ignores the
expectation, after a wait) and replaces a connection spent on a refusal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from predlat.errors import ConfigError
from predlat.models.registry import resolve_model
from predlat.serving import http_client
from predlat.serving.app import ServerConfig, create_app
from predlat.serving.http_client import RawHttpClient, encode_expecting, encode_request
from predlat.serving.loadgen import LoadConfig, run
from predlat.serving.server import BackgroundServer
from serving_fakes import FakeRuntime
from test_serving_door import body

INFER = "/v2/models/tiny/infer"
BODY = b"x" * 5000
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"


async def read_head(reader: asyncio.StreamReader) -> int:
    """A request's head; its Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[int]], Awaitable[None]]


async def exchange(handler: Handler, send_twice: bool = False) -> tuple[list[int], list[int]]:
    """Serve `handler` on a loopback port, send it one expecting request (two, in a row,
    with `send_twice`); (the statuses the client got, what the handler recorded)."""
    seen: list[int] = []
    server = await asyncio.start_server(lambda r, w: handler(r, w, seen), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RawHttpClient(f"http://127.0.0.1:{port}", timeout_s=5)
    request = encode_expecting("POST", "/", "test", BODY)
    try:
        statuses = [(await client.send(request)).status for _ in range(1 + send_twice)]
    finally:
        client.close()
    for _ in range(500):  # the handler records once it has seen the client's end
        if len(seen) == len(statuses):
            break
        await asyncio.sleep(0.01)
    server.close()
    return statuses, seen


async def refuse_from_headers(reader, writer, seen) -> None:
    await read_head(reader)
    writer.write(REFUSED)
    seen.append(len(await reader.read()))  # whatever came after the head, until EOF
    writer.close()


async def continue_then_answer(reader, writer, seen) -> None:
    while not reader.at_eof():
        try:
            length = await read_head(reader)
        except asyncio.IncompleteReadError:
            break
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        seen.append(len(await reader.readexactly(length)))
        writer.write(OK)
    writer.close()


async def ignore_expectation(reader, writer, seen) -> None:
    length = await read_head(reader)
    seen.append(len(await reader.readexactly(length)))  # waits for the body regardless
    writer.write(OK)
    writer.close()


def test_refused_from_the_headers_the_body_is_never_sent():
    statuses, seen = asyncio.run(exchange(refuse_from_headers))
    assert statuses == [503] and seen == [0]


def test_body_follows_100_continue_and_the_connection_is_kept():
    statuses, seen = asyncio.run(exchange(continue_then_answer, send_twice=True))
    assert statuses == [200, 200] and seen == [len(BODY), len(BODY)]


def test_a_server_ignoring_the_expectation_gets_the_body_after_a_wait(monkeypatch):
    monkeypatch.setattr(http_client, "EXPECT_WAIT_S", 0.05)
    statuses, seen = asyncio.run(exchange(ignore_expectation))
    assert statuses == [200] and seen == [len(BODY)]


def door_server(refuse_all: bool) -> tuple[BackgroundServer, FakeRuntime]:
    spec = resolve_model("tiny")
    runtime = FakeRuntime([spec])
    forecast = (lambda model, priority, waiting: 60.0) if refuse_all else None
    app = create_app(runtime, [spec], ServerConfig({"tiny": 1.0}), forecast=forecast)
    return BackgroundServer(app), runtime


async def answers(url: str, expecting: bool, count: int = 1) -> tuple[list, int]:
    """`count` requests in a row: (their answers, idle connections the client then has)."""
    client = RawHttpClient(url, timeout_s=10)
    encode = encode_expecting if expecting else encode_request
    request = encode("POST", INFER, "test", body(), {"Content-Type": "application/json"})
    try:
        got = [await client.send(request) for _ in range(count)]
        for _ in range(500):  # a connection spent on a refusal is replaced in the background
            if client._idle:
                break
            await asyncio.sleep(0.01)
        return got, len(client._idle)
    finally:
        client.close()


@pytest.mark.parametrize("expecting", [True, False])
def test_door_refusal_closes_only_a_connection_whose_body_was_held_back(expecting):
    server, runtime = door_server(refuse_all=True)
    try:
        with server:
            got, idle = asyncio.run(answers(server.url, expecting, count=2))
    finally:
        runtime.stop()
    assert [a.status for a in got] == [503, 503]
    assert all(a.headers.get("retry-after") == "1" for a in got)
    closes = [a.headers.get("connection") == "close" for a in got]
    assert closes == [expecting, expecting]
    assert idle == 1  # kept alive, or replaced by a spare
    assert runtime.submitted == []


def test_admitted_request_gets_100_continue_and_its_answer():
    server, runtime = door_server(refuse_all=False)
    try:
        with server:
            got, idle = asyncio.run(answers(server.url, expecting=True, count=2))
    finally:
        runtime.stop()
    assert [a.status for a in got] == [200, 200] and idle == 1
    assert len(runtime.submitted) == 2


@pytest.mark.parametrize("expect_from", [1, 0])  # 1 byte: every body waits; 0: none
def test_load_generator_gets_every_refusal_either_way(expect_from):
    server, runtime = door_server(refuse_all=True)
    config = LoadConfig(rate=50, duration_s=0.3, seed=1, expect_continue_bytes=expect_from)
    try:
        with server:
            results = run(LoadConfig(**{**config.__dict__, "url": server.url}), progress=False)
    finally:
        runtime.stop()
    assert results["requests"] > 0
    assert results["status_codes"] == {"503": results["requests"]}
    assert results["server"]["predlat_refusals{deadline_below_forecast}"] == results["requests"]


def test_negative_expect_size_is_a_config_error():
    with pytest.raises(ConfigError, match="expect-continue"):
        LoadConfig(expect_continue_bytes=-1).validate()
