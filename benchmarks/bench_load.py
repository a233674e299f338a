"""How hard `predlat load` can push: offered rate and send lag against a stub server.

    PYTHONPATH=src python3 benchmarks/bench_load.py [--rate 2000] [--duration 5]

The stub is a minimal v2 server in a process of its own (uvloop, httptools-free: a raw
asyncio protocol answering every infer at once), so the figures are the client's: its
offered rate (requests sent / span of sends), its send lag (actual minus scheduled
send time, p50/p99) and its CPU time per request (what the client can sustain, and a
figure other processes on the machine disturb little). Target in the issue: >= 2,000
req/s with p99 send lag under 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
import time

METADATA = {
    "name": "tiny",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}
ANSWER = json.dumps(
    {
        "model_name": "tiny",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 0.0, 0.0, 0.0]}
        ],
    }
).encode()


def _reply(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


class _Stub(asyncio.Protocol):
    """Answers each complete request (headers + Content-Length body) at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            path = head.split(b" ")[1]
            if path == b"/metrics":
                self.transport.write(  # type: ignore[attr-defined]
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
                )
                continue
            if path.endswith(b"/infer"):
                answer = ANSWER
            elif path == b"/v2/repository/index":
                answer = b'[{"name":"tiny","version":"1","state":"READY"}]'
            else:
                answer = json.dumps(METADATA).encode()
            self.transport.write(_reply(answer))  # type: ignore[attr-defined]


def _serve(sock: socket.socket) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Stub, sock=sock)
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()

    from predlat.serving.loadgen import LoadConfig, run

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    stub = multiprocessing.get_context("spawn").Process(target=_serve, args=(sock,), daemon=True)
    stub.start()
    time.sleep(1.0)
    try:
        config = LoadConfig(url=f"http://127.0.0.1:{port}", rate=args.rate,
                            duration_s=args.duration, deadline_ms=1000.0)  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_SELF)
        results = run(config, progress=False)
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        stub.terminate()
    lag = results["send_lag_ms"]
    print(f"predlat load against a stub server: {results['requests']} requests")
    print(f"  offered rate {results['offered_rate_rps']:.0f} req/s (asked {args.rate:.0f})")
    print(f"  send lag p50 {lag['p50']:.3f} ms, p99 {lag['p99']:.3f} ms, max {lag['max']:.3f} ms")
    print(f"  answered {results['status_codes']}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"  client CPU {cpu / max(1, results['requests']) * 1e6:.0f} us per request")


if __name__ == "__main__":
    main()
