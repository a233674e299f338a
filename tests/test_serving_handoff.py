"""Big bodies reach the decode workers through reused shared-memory segments."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from predlat.serving.decode import OffLoopDecoder, decode_infer_request
from predlat.serving.handoff import SEGMENT_ROUNDING, SegmentPool, decode_shared


def body(rows: int) -> bytes:
    x = np.arange(rows * 16, dtype=np.float32).reshape(rows, 16)
    doc = {"inputs": [{"name": "x", "shape": [rows, 16], "datatype": "FP32",
                       "data": x.ravel().tolist()}]}  # fmt: skip
    return orjson.dumps(doc)


def test_segments_are_reused_and_freed_on_close():
    pool = SegmentPool(keep=1)
    first = pool.put(b"abc")
    assert first is not None and bytes(first.buf[:3]) == b"abc"
    assert first.size >= SEGMENT_ROUNDING  # rounded up, so bodies of similar size share it
    pool.give_back(first)
    again = pool.put(b"xyz")
    assert again is first  # the idle segment, not a new one
    extra = pool.put(b"more")
    assert extra is not None and extra is not first
    pool.give_back(again)
    pool.give_back(extra)  # over `keep`: destroyed at once
    pool.close()
    with pytest.raises(FileNotFoundError):
        type(first)(name=first.name)  # unlinked


def test_decode_shared_reads_the_segment_as_the_body(spec):
    data = body(3)
    pool = SegmentPool(keep=1)
    segment = pool.put(data)
    assert segment is not None
    try:
        shared = decode_shared(segment.name, len(data), None, spec)
    finally:
        pool.give_back(segment)
        pool.close()
    direct = decode_infer_request(data, None, spec)
    np.testing.assert_array_equal(shared.inputs["x"], direct.inputs["x"])
    assert shared.rows == direct.rows == 3


def test_worker_decodes_through_shared_memory(spec):
    decoder = OffLoopDecoder(processes=1, offload_bytes=100)
    decoder.start()
    try:
        data = body(40)
        decoded = asyncio.run(decoder.decode(data, None, spec))
        assert decoded.inputs["x"].shape == (40, 16)
        assert decoded.inputs["x"][39, 15] == 40 * 16 - 1
        assert len(decoder._segments._free) == 1  # given back for the next body
    finally:
        decoder.close()
