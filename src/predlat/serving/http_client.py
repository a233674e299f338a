"""A lean HTTP/1.1 client for the load generator: keep-alive connections as asyncio
protocols, responses parsed by httptools (uvicorn's C parser), requests pre-encoded to
bytes. A general client (httpx) costs ~1.5 ms per request in Python and stalls near 32
requests in flight; this one costs a few tens of microseconds, so an open-loop load keeps
its schedule at thousands of requests per second.

One request per connection at a time (no pipelining: one slow answer must not delay the
next one's measurement); connections open on demand up to `max_connections`.

Big bodies can wait for the server's go-ahead (`Expect: 100-continue`, as curl does for
large uploads): a server that refuses from the headers alone (predlat's door) answers at
once, and the client neither spends a core writing megabytes nobody reads nor keeps the
connection busy with them. Such a connection is closed after a refusal (the server no
longer knows where the next request would begin) and a spare one opened in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

from predlat.errors import ConfigError

EXPECT_WAIT_S = 1.0  # as curl: a server that ignores the expectation gets the body then


@dataclass(frozen=True)
class ExpectingRequest:
    """A request whose head says `Expect: 100-continue`: `body` goes out only once the
    server answers 100 Continue, or after EXPECT_WAIT_S without any answer."""

    head: bytes
    body: bytes


Request = bytes | ExpectingRequest


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


def encode_request(
    method: str, path: str, host: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """A whole HTTP/1.1 request as bytes, sent as is each time."""
    return _head(method, path, host, len(body), headers) + body


def encode_expecting(
    method: str, path: str, host: str, body: bytes, headers: dict[str, str] | None = None
) -> ExpectingRequest:
    """A request whose body waits for the server's 100 Continue (see the module doc)."""
    expect = {**(headers or {}), "Expect": "100-continue"}
    return ExpectingRequest(_head(method, path, host, len(body), expect), body)


def _head(method: str, path: str, host: str, length: int, headers: dict[str, str] | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items() if k.lower() != "content-length"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Connection(asyncio.Protocol):
    def __init__(self, on_closed: Callable[[_Connection], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.response = RawResponse(0)
        self._chunks: list[bytes] = []
        self.closed = False
        self.spent = False  # closed by the client after an answer: worth replacing
        self._held: bytes | None = None  # a body waiting for 100 Continue
        self._held_timer: asyncio.TimerHandle | None = None
        self._on_closed = on_closed

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._drop_held()
        self._fail(ConnectionError("connection closed by the server"))
        self._on_closed(self)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # interim (100 Continue): the final answer is still to come
            self.response, self._chunks = RawResponse(0), []
            if status == 100:
                self._send_held()
            return
        response = self.response
        response.status = status
        response.body = b"".join(self._chunks)
        self.response, self._chunks = RawResponse(0), []
        waiter, self.waiter = self.waiter, None
        if self._held is not None:  # answered before the body: the framing is lost
            self._drop_held()
            self.spent = True
            self.close()
        elif not self.parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- use ------------------------------------------------------------------------------
    def send(self, request: Request, waiter: asyncio.Future) -> None:
        self.waiter = waiter
        assert self.transport is not None
        if isinstance(request, bytes):
            self.transport.write(request)
            return
        self._held = request.body
        self.transport.write(request.head)
        loop = asyncio.get_running_loop()
        self._held_timer = loop.call_later(EXPECT_WAIT_S, self._send_held)

    def _send_held(self) -> None:
        body = self._held
        self._drop_held()
        if body is not None and self.transport is not None and not self.closed:
            self.transport.write(body)

    def _drop_held(self) -> None:
        self._held = None
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class RawHttpClient:
    """Keep-alive connections to one server; `await client.send(request_bytes)`."""

    def __init__(self, url: str, max_connections: int = 512, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"the load generator speaks plain http://host:port, got '{url}'")
        self.host, self.port = parts.hostname, parts.port or 80
        self.netloc = parts.netloc
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._freed: asyncio.Event | None = None
        self._spares: set[asyncio.Task] = set()  # connections opening to replace spent ones
        self._closing = False

    def send_now(self, request: Request) -> asyncio.Future | None:
        """Write one pre-encoded request at once on an idle connection, without a task
        or a pass of the loop in between (an open loop keeps its schedule); a future of
        its response (or TimeoutError / ConnectionError). None when no connection is
        idle: `send` then waits for or opens one."""
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            timer = loop.call_later(self.timeout_s, _expire, waiter)
            conn.send(request, waiter)
            waiter.add_done_callback(functools.partial(self._settle, conn, timer))
            return waiter
        return None

    def _settle(self, conn: _Connection, timer: asyncio.TimerHandle, done: asyncio.Future) -> None:
        timer.cancel()
        if done.cancelled() or done.exception() is not None:
            conn.close()  # an answer may still come: never reuse this connection
            if self._freed is not None:
                self._freed.set()
            return
        self._release(conn)

    async def send(self, request: Request) -> RawResponse:
        """Send one pre-encoded request; its response, or TimeoutError / ConnectionError."""
        conn = await self._acquire()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout_s, _expire, waiter)
        try:
            conn.send(request, waiter)
            response = await waiter
        except BaseException:
            conn.close()  # an answer may still come: never reuse this connection
            raise
        finally:
            timer.cancel()
        self._release(conn)
        return response

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
            if self._open < self.max_connections:
                return await self._connect()
            if self._freed is None:
                self._freed = asyncio.Event()
            self._freed.clear()
            await self._freed.wait()

    def _release(self, conn: _Connection) -> None:
        if not conn.closed:
            self._idle.append(conn)
        if self._freed is not None:
            self._freed.set()

    async def _connect(self) -> _Connection:
        self._open += 1
        try:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(
                lambda: _Connection(self._closed), self.host, self.port
            )
        except OSError as exc:
            self._open -= 1
            raise ConnectionError(f"cannot connect to {self.netloc}: {exc}") from None
        return conn

    async def _spare(self) -> None:
        """Open a connection ahead of need, so the next request does not wait for it."""
        with contextlib.suppress(ConnectionError):
            conn = await self._connect()
            if self._closing:
                conn.close()
            else:
                self._release(conn)

    def _closed(self, conn: _Connection) -> None:
        self._open -= 1
        if conn.spent and not self._closing and self._open < self.max_connections:
            task = asyncio.get_running_loop().create_task(self._spare())
            self._spares.add(task)
            task.add_done_callback(self._spares.discard)
        if self._freed is not None:
            self._freed.set()

    def close(self) -> None:
        self._closing = True
        for task in list(self._spares):
            task.cancel()
        while self._idle:
            self._idle.pop().close()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer before the client's timeout"))
