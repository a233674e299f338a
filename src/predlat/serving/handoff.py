"""Handing big bodies to the decode workers through shared memory, not the pool's pipe.

A ProcessPoolExecutor pickles a call's arguments on its feeder thread, and pickling a
3 MB body is one C call that holds the GIL for milliseconds (about 2.5 ms measured on
this project's 2-core machine): the event loop, and every refusal it would answer at
the door, waits that long. Copying the body into a reused shared-memory segment is a
plain memcpy (a few hundred microseconds for 3 MB); the worker copies it out again,
off the server's GIL, and only the segment's name crosses the pipe.
"""

from __future__ import annotations

import logging
from multiprocessing.shared_memory import SharedMemory

from predlat.models.spec import ModelSpec
from predlat.serving.protocol import InferRequest

log = logging.getLogger(__name__)

SEGMENT_ROUNDING = 1 << 20  # sizes rounded up to whole MiB, so segments get reused


class SegmentPool:
    """Shared-memory segments for bodies in flight to the workers, reused (a fresh
    segment's pages fault in on first write), at most `keep` of them kept idle."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[SharedMemory] = []
        self._closed = False

    def put(self, body: bytes) -> SharedMemory | None:
        """A segment holding `body` (the caller gives it back), or None when no segment
        can be had (shared memory full or missing: the caller pickles instead)."""
        segment = self._take(len(body))
        if segment is not None:
            segment.buf[: len(body)] = body
        return segment

    def give_back(self, segment: SharedMemory) -> None:
        if self._closed or len(self._free) >= self.keep:
            _destroy(segment)
        else:
            self._free.append(segment)

    def close(self) -> None:
        """Free the idle segments; those in flight are freed when given back."""
        self._closed = True
        while self._free:
            _destroy(self._free.pop())

    def _take(self, size: int) -> SharedMemory | None:
        for i, segment in enumerate(self._free):
            if segment.size >= size:
                return self._free.pop(i)
        rounded = -(-max(1, size) // SEGMENT_ROUNDING) * SEGMENT_ROUNDING
        try:
            return SharedMemory(create=True, size=rounded)
        except OSError as exc:
            log.debug("no shared memory for a %d-byte body (%s): pickling it", size, exc)
            return None


def _destroy(segment: SharedMemory) -> None:
    segment.close()
    segment.unlink()


def decode_shared(name: str, size: int, header_length: int | None, spec: ModelSpec) -> InferRequest:
    """In a worker: the body from segment `name`, decoded (the segment is left to its
    owner, the server process)."""
    from predlat.serving.decode import decode_infer_request  # (decode imports this module)

    segment = SharedMemory(name=name)
    try:
        body = bytes(segment.buf[:size])
    finally:
        segment.close()
    return decode_infer_request(body, header_length, spec)
