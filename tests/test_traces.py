"""Trace files (exact round trip, clear errors) and trace collection on a real device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper

from predlat.devices import BatchJob, OrtDevice, OrtDeviceConfig
from predlat.errors import ConfigError, PredlatError
from predlat.models.spec import load_model_spec
from predlat.profiling.profile import (
    FEATURE_NAMES,
    BatchProfile,
    LatencyStats,
    MachineInfo,
    Profile,
)
from predlat.traces import BatchRecord, attach_timelines, read_trace, write_trace
from predlat.traces.collect import (
    CollectConfig,
    _Dispatcher,
    collect,
    collect_trace,
    device_capacity,
    summarize,
)
from predlat.traces.trace_file import read_trace_metadata


def _synthetic_records() -> list[BatchRecord]:
    """Batch 0 overlaps 1 and 2 (one arriving, one leaving mid-batch); 3 runs alone."""
    raw = [
        BatchRecord(0, "a", 4, 0, 0.0, 0.1, 1.1),
        BatchRecord(1, "b", 1, 1, 0.0, 0.0, 0.5),
        BatchRecord(2, "a", 8, 2, 0.55, 0.6, 1.6),
        BatchRecord(3, "c", 2, 0, 2.0, 2.0, 2.25),
        BatchRecord(4, "b", 3, 0, 1.0 / 3.0, 2.5, 2.5 + 1e-7, device=1),
    ]
    return attach_timelines(raw)


def test_round_trip_is_exact_with_empty_and_multi_overlap_timelines(tmp_path: Path) -> None:
    records = _synthetic_records()
    by_id = {r.batch_id: r for r in records}
    assert len(by_id[0].timeline) == 2 and by_id[3].timeline == ()
    meta = {"models": ["a", "b", "c"], "concurrency": 3, "load": 0.5, "seed": 7}
    path = write_trace(tmp_path / "t.parquet", records, meta)
    trace = read_trace(path)
    assert trace.records == records  # dataclass equality: every float bit-exact
    for key, value in meta.items():
        assert trace.metadata[key] == value
    assert trace.metadata["format"] == "predlat-trace"
    assert read_trace_metadata(path)["seed"] == 7


def test_trace_is_plain_parquet(tmp_path: Path) -> None:
    records = _synthetic_records()
    path = write_trace(tmp_path / "t.parquet", records)
    table = pq.read_table(path)
    assert table.num_rows == len(records)
    assert table.column("latency").to_pylist() == [r.latency for r in records]
    first = table.column("timeline").to_pylist()[0]
    assert set(first[0]) == {"batch_id", "model", "batch_size", "start", "end"}


def test_empty_trace_round_trips(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "empty.parquet", [], {"models": []})
    assert read_trace(path).records == []


@pytest.mark.parametrize("kind", ["text", "plain_parquet", "missing"])
def test_bad_file_is_a_one_line_error_naming_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.parquet"
    if kind == "text":
        path.write_text("hello, not parquet\n")
    elif kind == "plain_parquet":
        pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(PredlatError) as info:
        read_trace(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize(
    ("column", "value", "named"),
    [
        ("model", None, "row 1: 'model' is None"),
        ("end", None, "row 1: 'end' is None"),
        ("start", float("nan"), "row 1: 'start' is nan"),
        ("end", float("inf"), "row 1: 'end' is inf"),
        ("batch_size", None, "row 1: 'batch_size' is None"),
    ],
)
def test_a_trace_with_missing_or_non_finite_values_names_row_and_column(
    tmp_path: Path, column: str, value: object, named: str
) -> None:
    path = write_trace(tmp_path / "t.parquet", _synthetic_records(), {"concurrency": 2})
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[1] = value
    field = table.schema.field(column)
    table = table.set_column(
        table.schema.get_field_index(column), field, pa.array(values, field.type)
    )
    pq.write_table(table, path)
    with pytest.raises(PredlatError, match=named):
        read_trace(path)


def test_a_trace_with_a_non_integer_format_version(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.parquet", _synthetic_records(), {"concurrency": 2})
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"predlat"])
    meta["format_version"] = "1"
    pq.write_table(table.replace_schema_metadata({b"predlat": json.dumps(meta)}), path)
    with pytest.raises(PredlatError, match="format_version '1' is not an integer"):
        read_trace(path)


# -- collection ----------------------------------------------------------------------
def _mlp_model(path: Path, width: int, depth: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    nodes, weights, prev = [], [], "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == depth - 1 else f"h{i}"
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [out]),
        ]
        prev = out
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _measured_profile(device: OrtDevice, specs, sizes=(1, 2, 4, 8)) -> Profile:
    models: dict[str, dict[int, BatchProfile]] = {}
    for spec in specs:
        device.load(spec)
        models[spec.name] = {}
        for n in sizes:
            times = [device.run_sync(0, BatchJob(0, spec.name, n)).latency for _ in range(5)]
            median = float(np.median(times[1:]))
            stats = LatencyStats(median, max(times[1:]), 0.0, 4)
            models[spec.name][n] = BatchProfile(stats, dict.fromkeys(FEATURE_NAMES, 0.0))
    machine = MachineInfo("CPUExecutionProvider", 2, 1, "test cpu", {})
    return Profile(machine=machine, models=models)


def _flat_profile(latencies: dict[str, float]) -> Profile:
    machine = MachineInfo("CPUExecutionProvider", 2, 1, "test cpu", {})
    models = {
        m: {
            n: BatchProfile(LatencyStats(s * n, s * n, 0.0, 1), dict.fromkeys(FEATURE_NAMES, 0.0))
            for n in (1, 8)
        }
        for m, s in latencies.items()
    }
    return Profile(machine=machine, models=models)


def test_capacity_follows_its_definition() -> None:
    profile = _flat_profile({"a": 0.001, "b": 0.003})  # 1 ms and 3 ms per request
    # P = min(K, cores // threads) = 2; mean cost per request 2 ms -> 1000 req/s.
    assert device_capacity(profile, ["a", "b"], concurrency=4) == pytest.approx(1000.0)
    assert device_capacity(profile, ["a", "b"], concurrency=1) == pytest.approx(500.0)


def test_dispatcher_batches_at_target_or_after_the_window() -> None:
    rng = np.random.default_rng(0)
    d = _Dispatcher({"a": 10.0}, max_batch=8, rng=rng)
    d.targets["a"] = 3
    d.queues["a"].extend([0.0, 0.01])
    assert d.pick(0.02) is None  # 2 of 3 queued and the window (0.3 s) is open
    assert d.next_ready() == pytest.approx(0.3)
    d.queues["a"].append(0.02)
    assert d.pick(0.03) == ("a", 3)  # target reached
    d.targets["a"] = 5
    d.queues["a"].extend([1.0, 1.1])
    assert d.pick(1.49) is None
    assert d.pick(1.5) == ("a", 2)  # window 5 / 10 = 0.5 s passed: take what is there
    assert d.drop_all() == 0


def test_collection_metadata_round_trips_through_a_trace_file(tmp_path: Path) -> None:
    spec = load_model_spec(_mlp_model(tmp_path / "m.onnx", 128, 4, 0))
    device = OrtDevice(OrtDeviceConfig(num_slots=2))
    try:
        profile = _measured_profile(device, [spec])
        result = collect(device, [spec], profile, CollectConfig(2, 0.3, 0.6, 1), progress=False)
    finally:
        device.close()
    assert result.requests == result.served + result.dropped
    path = write_trace(tmp_path / "t.parquet", result.records, result.metadata(profile))
    meta = read_trace(path).metadata
    assert meta["concurrency"] == 2 and meta["load"] == 0.3 and meta["models"] == ["m"]
    assert meta["machine"]["cores"] == 2
    foreign = meta["foreign_cpu_frac"]
    assert foreign is None or 0.0 <= foreign <= 1.0
    assert all(0.0 <= frac <= 1.0 for _, frac in meta["foreign_cpu_samples"])


def test_collect_rejects_too_few_slots(tmp_path: Path) -> None:
    spec = load_model_spec(_mlp_model(tmp_path / "m.onnx", 64, 2, 0))
    device = OrtDevice(OrtDeviceConfig(num_slots=1))
    try:
        with pytest.raises(ConfigError, match="slots"):
            collect(device, [spec], _flat_profile({"m": 0.001}), CollectConfig(2, 0.5, 1.0))
    finally:
        device.close()


@pytest.mark.slow
def test_collect_trace_on_a_real_device(tmp_path: Path) -> None:
    specs = [
        load_model_spec(_mlp_model(tmp_path / "wide.onnx", 768, 6, 0)),
        load_model_spec(_mlp_model(tmp_path / "deep.onnx", 384, 16, 1)),
    ]
    device = OrtDevice(OrtDeviceConfig(num_slots=2))
    try:
        profile = _measured_profile(device, specs)
        records = collect_trace(
            device, specs, profile, concurrency=2, load=0.5, duration=2.0, seed=3, progress=False
        )
    finally:
        device.close()
    assert len(records) > 20
    assert {r.model for r in records} == {"wide", "deep"}
    assert {r.slot for r in records} == {0, 1}
    assert min(r.batch_size for r in records) >= 1 and max(r.batch_size for r in records) <= 8
    assert len({r.batch_size for r in records}) >= 4  # sizes cover the range
    for r in records:
        assert r.dispatch <= r.start < r.end
        for o in r.timeline:
            assert r.start <= o.start < o.end <= r.end
            assert o.batch_id != r.batch_id
    overlapped = [r for r in records if r.timeline]
    assert len(overlapped) > len(records) // 4
    # At most K = 2 batches at once: no batch can have two co-runners at the same instant.
    for r in overlapped:
        for a, b in zip(r.timeline, r.timeline[1:], strict=False):
            assert b.start >= a.end - 1e-12
    ids = [r.batch_id for r in records]
    assert len(set(ids)) == len(ids)
    summary = summarize(records, profile)
    assert 1.0 < summary.mean_concurrency <= 2.0 + 1e-9
    assert summary.mean_slowdown > 0.5


def test_trace_cli_rejects_bad_flags(tmp_path: Path, capsys) -> None:
    from predlat.cli import main

    assert main(["trace", "--concurrency", "0", "--out", str(tmp_path / "t.parquet")]) == 2
    assert main(["trace", "--out", str(tmp_path)]) == 2  # a folder, not a file
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("predlat trace: error:") for e in errors)
