"""The runtime on the wall clock: a gated fake device for exact order checks, and the
real ONNX Runtime device with the `tiny` zoo model."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest

from predlat.errors import UnknownModelError
from predlat.models.registry import resolve_model
from predlat.runtime import InvalidInputError, Runtime, build_runtime
from predlat.runtime.build import warm_up
from predlat.runtime.gc_policy import GcPolicy
from predlat.scheduling import (
    FixedSlowdownForecaster,
    Priority,
    Scheduler,
    get_policy,
)
from predlat.sim import SyntheticModel, synthetic_profile
from runtime_fakes import GatedDevice, gated_runtime, x


def test_priorities_and_edf_respected_on_the_wall_clock() -> None:
    runtime, device = gated_runtime(max_batch=1)
    try:
        device.gate.clear()  # the first request holds the only slot
        first = runtime.submit("a", x(1), deadline_s=10.0)
        time.sleep(0.05)
        lows = [runtime.submit("a", x(1), deadline_s=5.0 + i) for i in range(3)]
        highs = [
            runtime.submit("b", x(1), deadline_s=9.0 - i, priority=Priority.HIGH) for i in range(3)
        ]
        time.sleep(0.05)
        device.gate.set()
        outcomes = [f.result(timeout=10) for f in [first, *lows, *highs]]
    finally:
        runtime.stop()
    assert all(o.status == "met" for o in outcomes)
    starts = {o.request_id: o.start for o in outcomes}
    order = sorted(starts, key=starts.__getitem__)
    hi_ids = [o.request_id for o in outcomes[4:]]
    lo_ids = [o.request_id for o in outcomes[1:4]]
    assert order == [outcomes[0].request_id, *reversed(hi_ids), *lo_ids]
    assert device.closed


def test_outputs_are_split_back_per_request_rows() -> None:
    runtime, device = gated_runtime()
    try:
        device.gate.clear()
        runtime.submit("a", x(1), deadline_s=10.0)
        time.sleep(0.05)
        futures = [
            runtime.submit("a", x(rows, float(i)), deadline_s=5.0)
            for i, rows in enumerate((1, 3, 2))
        ]
        device.gate.set()
        outcomes = [f.result(timeout=10) for f in futures]
    finally:
        runtime.stop()
    assert len({o.batch_id for o in outcomes}) == 1 and outcomes[0].batch_size == 6
    for i, (o, rows) in enumerate(zip(outcomes, (1, 3, 2), strict=True)):
        np.testing.assert_array_equal(o.outputs["y"], np.full((rows, 3), 2.0 * i, np.float32))
        assert o.outputs["scale"] == 2.0  # no batch axis: shared


def test_a_failing_batch_fails_only_its_requests_with_the_engine_message() -> None:
    runtime, _ = gated_runtime(slots=2, max_batch=1)
    try:
        bad = runtime.submit("a", x(1, float("nan")), deadline_s=5.0)
        good = runtime.submit("b", x(1), deadline_s=5.0)
        bad_out, good_out = bad.result(timeout=10), good.result(timeout=10)
        later = runtime.submit("a", x(1), deadline_s=5.0).result(timeout=10)
    finally:
        runtime.stop()
    assert (bad_out.status, bad_out.reason, bad_out.outputs) == (
        "failed",
        "bad value in input",
        None,
    )
    assert good_out.status == "met" and later.status == "met"


def test_rejections_errors_and_shutdown() -> None:
    runtime, device = gated_runtime(max_batch=1)
    seen = []
    runtime.add_listener(seen.append)
    impossible = runtime.submit("a", x(1), deadline_s=0.0005).result(timeout=10)
    assert impossible.status == "rejected" and "cannot be met" in impossible.reason
    with pytest.raises(UnknownModelError):
        runtime.submit("zzz", None, deadline_s=1.0)
    with pytest.raises(InvalidInputError, match="deadline"):
        runtime.submit("a", None, deadline_s=float("nan"))
    with pytest.raises(InvalidInputError, match="first"):
        runtime.submit("a", {"x": np.zeros((2, 3)), "z": np.zeros((3, 3))}, deadline_s=1.0)
    device.gate.clear()
    running = runtime.submit("a", None, deadline_s=10.0)
    time.sleep(0.05)
    queued = [runtime.submit("b", None, deadline_s=10.0) for _ in range(3)]
    threading.Timer(0.1, device.gate.set).start()
    runtime.stop(drain=False)
    after = runtime.submit("a", None, deadline_s=1.0).result(timeout=1)
    assert running.result(timeout=1).status == "met"
    assert [f.result(timeout=1).reason for f in queued] == ["shutting down"] * 3
    assert after.status == "rejected" and after.reason == "shutting down"
    assert Counter(o.status for o in seen) == {"rejected": 5, "met": 1}
    assert runtime.stats().rejected == 5


def test_inputs_are_checked_against_the_model_graph() -> None:
    spec = resolve_model("tiny")  # x: float32 [N, 16]
    profile = synthetic_profile({"tiny": SyntheticModel(0.001, 0.0001)})
    sched = Scheduler(
        ["tiny"], 1, FixedSlowdownForecaster(profile.solo_latency), profile, get_policy("predlat")
    )
    runtime = Runtime(GatedDevice(), sched, profile, specs={"tiny": spec})
    runtime.start()
    try:
        for bad, message in [
            ({"x": np.zeros((2, 16), np.float64)}, "must be float32"),
            ({"x": np.zeros((2, 15), np.float32)}, r"shape \[N, 16\]"),
            ({"y": np.zeros((2, 16), np.float32)}, "missing x; unknown y"),
        ]:
            with pytest.raises(InvalidInputError, match=message):
                runtime.submit("tiny", bad, deadline_s=1.0)
        ok = runtime.submit("tiny", {"x": np.ones((2, 16), np.float32)}, deadline_s=1.0)
        assert ok.result(timeout=10).status == "met"
    finally:
        runtime.stop()


def test_concurrent_clients_every_future_resolves_once() -> None:
    runtime, _ = gated_runtime(slots=2)
    futures = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(100):
            f = runtime.submit(
                str(rng.choice(["a", "b"])),
                x(int(rng.integers(1, 3))),
                deadline_s=float(rng.uniform(0.001, 0.05)),
                priority=Priority(int(rng.integers(0, 2))),
            )
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = [f.result(timeout=20) for f in futures]
    runtime.stop()
    assert len({o.request_id for o in outcomes}) == 400
    stats = runtime.stats()
    assert stats.submitted == 400 == stats.met + stats.missed + stats.rejected + stats.failed
    assert stats.batches > 0 and stats.dispatch_lag_p50_ms >= 0


@pytest.mark.slow
def test_real_device_tiny_model_matches_running_each_request_alone() -> None:
    runtime, profile = build_runtime(["tiny"], slots=2, policy="predlat", progress=False)
    batches = []
    runtime.add_batch_listener(lambda rec, predicted: batches.append((rec, predicted)))
    spec = runtime.specs["tiny"]
    session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal((int(rng.integers(1, 4)), 16)).astype(np.float32) for _ in range(200)
    ]
    runtime.start()
    try:
        futures = [
            runtime.submit(
                "tiny",
                {"x": a},
                deadline_s=0.2,
                priority=Priority.HIGH if i % 3 == 0 else Priority.LOW,
            )
            for i, a in enumerate(inputs)
        ]
        outcomes = [f.result(timeout=30) for f in futures]
    finally:
        runtime.stop()
    assert Counter(o.status for o in outcomes)["met"] >= 190
    for a, o in zip(inputs, outcomes, strict=True):
        if o.status in ("met", "missed"):
            (alone,) = session.run(None, {"x": a})
            np.testing.assert_allclose(o.outputs["y"], alone, rtol=1e-5, atol=1e-6)
    assert batches and max(rec.batch_size for rec, _ in batches) > 1
    assert runtime.stats().dispatch_lag_p99_ms < 50
    assert profile.solo_latency("tiny", 1) > 0


def test_a_stopped_runtime_leaves_nothing_behind() -> None:
    # start() takes what is alive out of the collector's reach (gc.freeze); stop() must
    # give it back, or the device and its sessions (reference cycles) would outlive the
    # runtime, and a process running runtime after runtime would grow and slow down.
    runtime, _ = build_runtime(["tiny"], slots=2, policy="predlat", progress=False)
    device = weakref.ref(runtime.device)
    threshold = gc.get_threshold()
    runtime.start()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GcPolicy().young
    assert runtime.submit("tiny", None, deadline_s=1.0).result(timeout=10).status == "met"
    runtime.stop()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold
    del runtime
    gc.collect()
    assert device() is None


@pytest.mark.slow
def test_serial_policy_builds_a_one_slot_device() -> None:
    runtime, _ = build_runtime(["tiny"], slots=4, policy="serial", progress=False)
    try:
        assert runtime.device.num_slots == 1
    finally:
        runtime.stop()


def test_warm_up_runs_every_model_and_size_once_per_slot() -> None:
    device = GatedDevice(num_slots=2, latency=0.0)
    warm_up(device, ["a", "b"], max_batch=3)
    runs = Counter((j.model, j.batch_size) for j in device.jobs)
    assert runs == {(m, n): 2 for m in ("a", "b") for n in (1, 2, 3)}
    assert all(j.batch_id < 0 and j.inputs is None for j in device.jobs)


def test_a_failing_round_still_answers_the_batches_that_finished() -> None:
    runtime, device = gated_runtime()
    sched = runtime.scheduler
    healthy = sched.on_tick
    try:
        device.gate.clear()
        future = runtime.submit("a", x(1), deadline_s=10.0)
        time.sleep(0.05)  # dispatched, held by the gate

        def broken(now: float) -> list:
            raise RuntimeError("planning failed")

        sched.on_tick = broken  # type: ignore[method-assign]
        device.gate.set()  # the batch finishes in a round whose planning fails
        assert future.result(timeout=5).status == "met"
    finally:
        sched.on_tick = healthy  # type: ignore[method-assign]
        runtime.stop()
