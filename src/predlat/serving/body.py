"""Reading an infer request's body: bounded in size, chunked or not, and decompressed
(gzip, deflate) the way tritonclient sends it, never past the size limit."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from starlette.requests import Request

from predlat.serving.protocol import ProtocolError


def content_length(headers: Mapping[str, str]) -> int:
    """The declared body size, 0 when not declared (chunked) or malformed."""
    declared = headers.get("content-length", "")
    return int(declared) if declared.isdigit() else 0


def body_held_back(headers: Mapping[str, str]) -> bool:
    """Whether the client waits for 100 Continue before sending the body (uvicorn sends
    it when the body is first read): refused before that, the body never comes."""
    return headers.get("expect", "").strip().lower() == "100-continue"


async def read_body(request: Request, limit: int) -> bytes:
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
    return decompress(body, encoding, limit)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    more = "at least " if at_least else ""
    return f"request body of {more}{size} bytes is over the server's limit of {limit} bytes"


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
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
