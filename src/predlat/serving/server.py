"""Running the app on uvicorn: in the foreground with graceful shutdown on SIGINT/SIGTERM,
or in a background thread on a free loopback port (tests, benchmarks).

Shutdown order: stop taking new requests, let uvicorn finish every request in flight
(they complete because the runtime keeps running), then the app's lifespan stops the
runtime it started on the event loop with `drain=True`, which finishes or rejects
anything still queued (a runtime the caller started, the caller stops after serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from predlat.errors import ConfigError
from predlat.models.spec import ModelSpec
from predlat.profiling.profile import Profile
from predlat.serving.early import EarlyDoor, httptools_protocol

DEFAULT_GRACEFUL_TIMEOUT_S = 30
BACKLOG = 2048
# When no deadline is configured for a model: generous against its solo latency (batches
# co-run and queue), but never so tight that a fast model's requests all miss.
DEFAULT_DEADLINE_FACTOR = 10.0
MIN_DEFAULT_DEADLINE_S = 0.05


def default_deadlines(
    profile: Profile,
    specs: Sequence[ModelSpec],
    given: Mapping[str, float] | None = None,
    everyone: float | None = None,
) -> dict[str, float]:
    """Per-model default deadline (s): `given[model]`, else `everyone`, else derived from
    the model's solo latency at batch size 1."""
    given = given or {}
    unknown = sorted(set(given) - {s.name for s in specs})
    if unknown:
        raise ConfigError(f"default deadline given for model(s) not served: {', '.join(unknown)}")
    out: dict[str, float] = {}
    for spec in specs:
        if spec.name in given:
            out[spec.name] = given[spec.name]
        elif everyone is not None:
            out[spec.name] = everyone
        else:
            solo = profile.solo_latency(spec.name, 1)
            out[spec.name] = max(MIN_DEFAULT_DEADLINE_S, DEFAULT_DEADLINE_FACTOR * solo)
    return out


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or a one-line ConfigError (port taken, bad host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host '{host}': {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    # The protocol must be IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on
    # accepted sockets whose proto says TCP, and without it every response waits ~40 ms
    # for the client's delayed ACK (headers and body go out as two writes).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Listening now (not when uvicorn starts) means a client that connects during
    # start-up waits in the backlog instead of being refused.
    sock.listen(BACKLOG)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server that tells the app when shutdown begins (so /v2/health/ready turns
    503 and late requests are refused) and, after a graceful stop on a signal, returns
    normally instead of re-raising the signal: the caller may still have a runtime to drain."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown
        self.stopped_by: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopped_by = sig
        self._on_shutdown()
        super().handle_exit(sig, frame)

    def request_stop(self) -> None:
        self._on_shutdown()
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _http_protocol(http: str, door: EarlyDoor | None = None) -> str | type:
    """uvicorn's httptools protocol (what "auto" picks when httptools is installed), with
    each request's first byte stamped into its scope and door refusals answered from the
    parser's callback (early.py)."""
    if http not in ("auto", "httptools"):
        return http
    protocol = httptools_protocol(door)
    return http if protocol is None else protocol  # no httptools: "auto" means h11


def _uvicorn_config(
    app: Starlette,
    graceful_timeout_s: float,
    log_level: str,
    loop: str = "auto",
    http: str = "auto",
) -> uvicorn.Config:
    """`loop` / `http` "auto": uvloop and httptools when installed (faster), else asyncio
    and h11."""
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,  # a log line per request costs more than the whole request path
        proxy_headers=False,  # nothing reads the client's address: skip a middleware layer
        lifespan="on",
        timeout_graceful_shutdown=int(graceful_timeout_s),
        loop=loop,
        http=_http_protocol(http, EarlyDoor(app.state.service)),
    )


def run_server(
    app: Starlette,
    sock: socket.socket,
    graceful_timeout_s: float = DEFAULT_GRACEFUL_TIMEOUT_S,
    log_level: str = "warning",
    loop: str = "auto",
    http: str = "auto",
) -> int | None:
    """Serve on `sock` in this thread until SIGINT/SIGTERM; return the signal that
    stopped it (None if it stopped otherwise)."""
    config = _uvicorn_config(app, graceful_timeout_s, log_level, loop, http)
    server = _Server(config, app.state.service.begin_shutdown)
    server.run(sockets=[sock])
    return server.stopped_by


class BackgroundServer:
    """The app on a free loopback port, served by a background thread.

    with BackgroundServer(app) as server:
        httpx.get(server.url + "/v2/health/ready")
    """

    def __init__(
        self,
        app: Starlette,
        host: str = "127.0.0.1",
        port: int = 0,
        graceful_timeout_s: float = 10,
    ) -> None:
        self.app = app
        self._sock = bind_socket(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        self._server = _Server(
            _uvicorn_config(app, graceful_timeout_s, "warning"), app.state.service.begin_shutdown
        )
        self._thread = threading.Thread(target=self._run, name="predlat-http", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """host:port, the form tritonclient takes."""
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start()/stop(), not lost in a thread
            self._error = exc

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        self._thread.start()
        give_up = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < give_up:
            time.sleep(0.005)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"server did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: refuse new requests, finish those in flight, then return."""
        self._server.request_stop()
        self._thread.join(timeout)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError("server did not stop in time")

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
