"""Bare echo servers, each in a process of its own: the floor a transport sets on a
machine, client and server, before predlat does anything.

    python benchmarks/echo_servers.py grpc|http    (prints its address, then serves)

- gRPC: grpc.aio with the service definitions tritonclient ships, answering ModelInfer
  at once with its input;
- HTTP: a bare Starlette route on uvicorn (the stack `predlat serve` runs on, with the
  same loop and parser choices and TCP_NODELAY), reading the body and answering a small
  JSON document.

Both answer with the `predlat_*` parameters a bench reads, at zero.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import grpc
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.grpc import service_pb2, service_pb2_grpc

from predlat.serving.server import bind_socket

ZERO_PARAMETERS = ("predlat_compute_ms", "predlat_latency_ms", "predlat_queue_ms")


class EchoServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers ModelInfer at once with its input (the floor: no runtime, no checks)."""

    async def ModelInfer(self, request, context):
        answer = service_pb2.ModelInferResponse(model_name=request.model_name)
        answer.raw_output_contents.extend(request.raw_input_contents)
        for key in ZERO_PARAMETERS:
            answer.parameters[key].double_param = 0.0
        return answer


async def serve_grpc() -> None:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"gRPC on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


async def http_echo(request: Request) -> Response:
    await request.body()
    doc = {"model_name": "tiny", "outputs": [], "parameters": dict.fromkeys(ZERO_PARAMETERS, 0.0)}
    return Response(orjson.dumps(doc), media_type="application/json")


def serve_http() -> None:
    app = Starlette(routes=[Route("/v2/models/{model}/infer", http_echo, methods=["POST"])])
    sock = bind_socket("127.0.0.1", 0)
    print(f"listening http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, loop="auto", http="auto", log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def start_echo(kind: str) -> tuple[subprocess.Popen, str]:
    """The `kind` echo server's process and its address (gRPC) or URL (HTTP)."""
    process = subprocess.Popen([sys.executable, __file__, kind], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    pattern = r"gRPC on ([\d.]+:\d+)" if kind == "grpc" else r"(http://[\d.]+:\d+)"
    found = re.search(pattern, process.stdout.readline())
    if found is None:
        process.kill()
        raise SystemExit(f"the {kind} echo server did not start")
    return process, found.group(1)


if __name__ == "__main__":
    if sys.argv[1:] == ["grpc"]:
        asyncio.run(serve_grpc())
    elif sys.argv[1:] == ["http"]:
        serve_http()
    else:
        raise SystemExit("usage: echo_servers.py grpc|http")
