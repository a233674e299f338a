"""Open Inference Protocol v2 encoding, decoding and validation, without a server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predlat.models.spec import ModelSpec, TensorSpec
from predlat.serving import protocol
from predlat.serving.decode import decode_infer_request, parse_header_length
from predlat.serving.protocol import (
    InferRequest,
    ProtocolError,
    RequestedOutput,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)

SPEC = ModelSpec(
    name="two",
    path=Path("two.onnx"),
    inputs=(
        TensorSpec("x", np.dtype(np.float32), (None, 4)),
        TensorSpec("ids", np.dtype(np.int64), (None, None)),
    ),
    outputs=(
        TensorSpec("y", np.dtype(np.float32), (None, 2)),
        TensorSpec("mask", np.dtype(np.bool_), (None,)),
    ),
    digest="0",
)


def inputs(rows: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {
        "x": rng.standard_normal((rows, 4)).astype(np.float32),
        "ids": rng.integers(0, 100, size=(rows, 3)).astype(np.int64),
    }


def decode(body: bytes, headers: dict[str, str]) -> InferRequest:
    length = parse_header_length(headers.get(protocol.HEADER_LENGTH), len(body))
    return decode_infer_request(body, length, SPEC)


def json_doc(**changes: object) -> dict:
    doc = {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4.5]},
            {"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [[7, 8]]},
        ]
    }
    doc.update(changes)
    return doc


def test_metadata_marks_dynamic_dims_and_platform():
    meta = protocol.model_metadata(SPEC)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"][1] == {"name": "ids", "datatype": "INT64", "shape": [-1, -1]}
    assert meta["outputs"][1] == {"name": "mask", "datatype": "BOOL", "shape": [-1]}
    server = protocol.server_metadata()
    assert server["name"] == "predlat" and "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip(binary: bool):
    feeds = inputs(3)
    body, headers = encode_infer_request(
        feeds, binary=binary, parameters={"priority": 1, "deadline_ms": 25}, request_id="r1"
    )
    assert (protocol.HEADER_LENGTH in headers) is binary
    request = decode(body, headers)
    assert request.rows == 3 and request.request_id == "r1"
    assert request.priority_level == 1 and request.deadline_s == pytest.approx(0.025)
    assert request.binary_output is True  # encode asks binary outputs by default
    for name, array in feeds.items():
        assert request.inputs[name].dtype == array.dtype
        np.testing.assert_array_equal(request.inputs[name], array)


def test_mixed_binary_and_json_inputs_in_one_request():
    feeds = inputs(2)
    raw = feeds["x"].tobytes()
    doc = {
        "inputs": [
            {
                "name": "ids",
                "shape": [2, 3],
                "datatype": "INT64",
                "data": feeds["ids"].ravel().tolist(),
            },
            {
                "name": "x",
                "shape": [2, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            },
        ]
    }
    header = json.dumps(doc).encode()
    request = decode_infer_request(header + raw, len(header), SPEC)
    np.testing.assert_array_equal(request.inputs["x"], feeds["x"])
    np.testing.assert_array_equal(request.inputs["ids"], feeds["ids"])


def test_binary_inputs_at_odd_offsets_are_realigned():
    doc = {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 16},
            },
            {
                "name": "ids",
                "shape": [1, 1],
                "datatype": "INT64",
                "parameters": {"binary_data_size": 8},
            },
        ]
    }
    header = json.dumps(doc).encode() + b" "  # odd header length: misaligned tensors
    x = np.arange(4, dtype=np.float32)
    body = header + x.tobytes() + np.array([5], dtype=np.int64).tobytes()
    request = decode_infer_request(body, len(header), SPEC)
    assert request.inputs["x"].ctypes.data % 4 == 0
    np.testing.assert_array_equal(request.inputs["x"][0], x)
    assert request.inputs["ids"][0, 0] == 5


def test_deadline_and_priority_parameters():
    def params(**p: object) -> InferRequest:
        return decode_infer_request(json.dumps(json_doc(parameters=p)).encode(), None, SPEC)

    assert params().deadline_s is None and params().priority_level == 0
    assert params(timeout=30000).deadline_s == pytest.approx(0.03)  # microseconds
    assert params(timeout=0).deadline_s is None  # Triton: 0 = no timeout
    assert params(timeout=30000, deadline_ms=5).deadline_s == pytest.approx(0.005)
    assert params(priority=2).priority_level == 2


BAD_REQUESTS = [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b"\xff\xfe", "not valid UTF-8"),
    (b'{"inputs":' + b"[" * 200_000 + b"]" * 200_000 + b"}", "malformed JSON"),  # too deep
    (
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":'
        + b"[" * 1000
        + b"1"
        + b"]" * 1000
        + b"}]}",
        "'data'",
    ),
    (json.dumps({"inputs": []}).encode(), "non-empty 'inputs'"),
    (json.dumps(json_doc(inputs=[json_doc()["inputs"][0]])).encode(), "missing input(s) ids"),
    (
        json.dumps(json_doc(inputs=[*json_doc()["inputs"], {"name": "z"}])).encode(),
        "has no input 'z'",
    ),
    (json.dumps(json_doc(inputs=[json_doc()["inputs"][0]] * 2)).encode(), "given twice"),
    (json.dumps(json_doc(parameters={"deadline_ms": -1})).encode(), "deadline_ms"),
    (json.dumps(json_doc(parameters={"deadline_ms": True})).encode(), "deadline_ms"),
    (json.dumps(json_doc(parameters={"timeout": 1.5})).encode(), "timeout"),
    (json.dumps(json_doc(parameters={"priority": -1})).encode(), "priority"),
    (json.dumps(json_doc(parameters={"binary_data_output": "yes"})).encode(), "binary_data_output"),
    (json.dumps(json_doc(parameters=[1])).encode(), "'parameters' must be a JSON object"),
    (json.dumps(json_doc(outputs=[{"name": "nope"}])).encode(), "has no output 'nope'"),
    (
        json.dumps(json_doc(outputs=[{"name": "y", "parameters": {"classification": 2}}])).encode(),
        "classification",
    ),
    (json.dumps(json_doc(id=5)).encode(), "'id' must be a string"),
]


@pytest.mark.parametrize(("body", "message"), BAD_REQUESTS)
def test_malformed_requests_say_what_is_wrong(body: bytes, message: str):
    with pytest.raises(ProtocolError) as info:
        decode_infer_request(body, None, SPEC)
    assert info.value.status == 400
    assert message in info.value.message


def _one_input(**fields: object) -> bytes:
    base = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    base.update(fields)
    ids = {"name": "ids", "shape": [1, 1], "datatype": "INT64", "data": [1]}
    return json.dumps({"inputs": [base, ids]}).encode()


BAD_TENSORS = [
    ({"datatype": "FP64"}, "datatype 'FP64', the model expects FP32"),
    ({"datatype": "BYTES"}, "the model expects FP32"),
    ({"shape": [1, 5]}, "shape [1, 5], the model expects [-1, 4]"),
    ({"shape": [4]}, "shape [4]"),
    ({"shape": [0, 4], "data": []}, "empty batch"),
    ({"shape": [1, -4]}, "non-negative integers"),
    ({"shape": "1,4"}, "non-negative integers"),
    ({"data": [1, 2, 3]}, "3 values, shape [1, 4] needs 4"),
    ({"data": [[1, 2], [3]]}, "ragged"),
    ({"data": ["a", "b", "c", "d"]}, "must hold FP32 values"),
    ({"data": [True, False, True, False]}, "must hold FP32 values"),
    ({"data": 4}, "'data' must be a list"),
    ({"data": None}, "'data' must be a list"),
    ({"parameters": {"shared_memory_region": "r"}}, "shared memory"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_TENSORS)
def test_bad_tensors_are_refused(fields: dict, message: str):
    body = _one_input(**fields)
    with pytest.raises(ProtocolError) as info:
        decode_infer_request(body, None, SPEC)
    assert message in info.value.message


def test_integer_tensors_refuse_floats_and_out_of_range_values():
    for data, message in (([1.5], "must hold INT64"), ([2**70], "INT64")):
        doc = json_doc()
        doc["inputs"][1] = {"name": "ids", "shape": [1, 1], "datatype": "INT64", "data": data}
        with pytest.raises(ProtocolError, match=message):
            decode_infer_request(json.dumps(doc).encode(), None, SPEC)


def test_inputs_must_agree_on_batch_size():
    doc = json_doc()
    doc["inputs"][1] = {"name": "ids", "shape": [2, 1], "datatype": "INT64", "data": [1, 2]}
    with pytest.raises(ProtocolError, match="disagree on the batch size"):
        decode_infer_request(json.dumps(doc).encode(), None, SPEC)


def test_binary_size_errors():
    feeds = inputs(1)
    body, headers = encode_infer_request(feeds)
    length = int(headers[protocol.HEADER_LENGTH])
    with pytest.raises(ProtocolError, match="add up to"):
        decode_infer_request(body + b"extra", length, SPEC)
    with pytest.raises(ProtocolError, match="only"):
        decode_infer_request(body[:-3], length, SPEC)
    doc = json.loads(body[:length])
    doc["inputs"][0]["parameters"]["binary_data_size"] = 12
    header = json.dumps(doc).encode()
    with pytest.raises(ProtocolError, match="needs 16"):
        decode_infer_request(header + body[length:], len(header), SPEC)
    doc["inputs"][0]["data"] = [1, 2, 3, 4]
    doc["inputs"][0]["parameters"]["binary_data_size"] = 16
    header = json.dumps(doc).encode()
    with pytest.raises(ProtocolError, match="both 'data' and binary_data_size"):
        decode_infer_request(header + body[length:], len(header), SPEC)
    # binary data sent without saying where the JSON ends
    with pytest.raises(ProtocolError):
        decode_infer_request(body, None, SPEC)


@pytest.mark.parametrize("value", ["abc", "-1", "999999"])
def test_bad_header_length(value: str):
    with pytest.raises(ProtocolError, match=protocol.HEADER_LENGTH):
        parse_header_length(value, 100)


def _request(outputs: tuple[RequestedOutput, ...] | None, binary_output: bool) -> InferRequest:
    return InferRequest("two", "id-7", {}, 2, outputs, binary_output, 0, None)


def test_response_binary_json_and_selected_outputs():
    outs = {"y": np.arange(4, dtype=np.float32).reshape(2, 2), "mask": np.array([True, False])}
    # all outputs, JSON
    body, length = encode_infer_response(_request(None, False), outs, {"predlat_status": "met"})
    assert length is None
    doc, arrays = decode_infer_response(body, length)
    assert doc["id"] == "id-7" and doc["parameters"]["predlat_status"] == "met"
    assert doc["outputs"][0]["data"] == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_array_equal(arrays["mask"], outs["mask"])
    # all outputs binary via binary_data_output
    body, length = encode_infer_response(_request(None, True), outs)
    doc, arrays = decode_infer_response(body, length)
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 16
    np.testing.assert_array_equal(arrays["y"], outs["y"])
    assert arrays["mask"].dtype == np.bool_
    # only `mask`, binary by its own parameter although the request default is JSON
    body, length = encode_infer_response(_request((RequestedOutput("mask", True),), False), outs)
    doc, arrays = decode_infer_response(body, length)
    assert [o["name"] for o in doc["outputs"]] == ["mask"] and length is not None
    # per-output False beats binary_data_output True
    body, length = encode_infer_response(_request((RequestedOutput("y", False),), True), outs)
    assert length is None and json.loads(body)["outputs"][0]["data"] == [0.0, 1.0, 2.0, 3.0]
