"""The runtime's controller hosted on an asyncio event loop (`start(loop)`): requests from
the loop and from other threads, timers, `stop_async` with and without draining, and
`stop` from another thread or after the loop has ended. The gated fake device gives exact
orders; the real ONNX Runtime device with the `tiny` model checks outputs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import Future

import numpy as np
import onnxruntime as ort
import pytest

from predlat.runtime import Runtime, build_runtime
from predlat.scheduling import Priority
from runtime_fakes import PROFILE, gated_runtime, x


async def outcome_of(future: Future, timeout: float = 10.0):
    return await asyncio.wait_for(asyncio.wrap_future(future), timeout)


async def hold_slot(runtime: Runtime, device) -> tuple[Future, list[Future]]:
    """One request running behind the closed gate, three queued behind it (one slot)."""
    device.gate.clear()
    running = runtime.submit("a", x(1), deadline_s=10.0)
    await asyncio.sleep(0.02)
    queued = [runtime.submit("b", x(1), deadline_s=10.0) for _ in range(3)]
    await asyncio.sleep(0.01)
    return running, queued


def test_real_device_requests_from_the_loop_and_threads_resolve_once_on_the_loop() -> None:
    runtime, _ = build_runtime(["tiny"], slots=2, policy="predlat", progress=False)
    spec = runtime.specs["tiny"]
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal((int(rng.integers(1, 4)), 16)).astype(np.float32) for _ in range(240)
    ]
    resolved: list[tuple[int, int]] = []  # (request id, thread)
    runtime.add_listener(lambda o: resolved.append((o.request_id, threading.get_ident())))
    sizes: list[int] = []
    runtime.add_batch_listener(lambda rec, _: sizes.append(rec.batch_size))
    futures: dict[int, Future] = {}

    def submit(i: int) -> None:
        priority = Priority.HIGH if i % 3 == 0 else Priority.LOW
        futures[i] = runtime.submit("tiny", {"x": inputs[i]}, deadline_s=0.5, priority=priority)

    def client(first: int) -> None:  # another thread
        for i in range(first, first + 30):
            submit(i)

    async def main() -> tuple[int, list]:
        runtime.start(asyncio.get_running_loop())
        threads = [threading.Thread(target=client, args=(120 + 30 * k,)) for k in range(4)]
        for t in threads:
            t.start()
        for i in range(120):
            submit(i)
            if i % 10 == 9:
                await asyncio.sleep(0.001)  # bursts of 10 from the loop
        for t in threads:
            await asyncio.to_thread(t.join)
        outcomes = await asyncio.gather(*(outcome_of(futures[i], 30) for i in range(240)))
        await runtime.stop_async()
        return threading.get_ident(), outcomes

    loop_thread, outcomes = asyncio.run(main())
    assert sorted(rid for rid, _ in resolved) == sorted(o.request_id for o in outcomes)
    assert len({o.request_id for o in outcomes}) == 240  # each resolved exactly once
    assert {thread for _, thread in resolved} == {loop_thread}  # no hop back to the loop
    assert Counter(o.status for o in outcomes)["met"] >= 216  # 0.5 s for a sub-ms model
    session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    for a, o in zip(inputs, outcomes, strict=True):
        if o.status in ("met", "missed"):
            np.testing.assert_allclose(o.outputs["y"], session.run(None, {"x": a})[0], rtol=1e-5)
    assert max(sizes) > 1  # a burst from the loop is decided in one round
    stats = runtime.stats()
    assert stats.submitted == 240 == stats.met + stats.missed + stats.rejected + stats.failed
    runtime.stop()  # stopped already: a no-op


def test_a_timer_alone_rejects_a_request_once_it_cannot_be_met() -> None:
    runtime, device = gated_runtime(max_batch=1, start=False)

    async def main():
        runtime.start(asyncio.get_running_loop())
        device.gate.clear()
        first = runtime.submit("a", x(1), deadline_s=10.0)  # holds the only slot
        await asyncio.sleep(0.02)
        late = runtime.submit("a", x(1), deadline_s=0.06)
        outcome = await outcome_of(late, 5.0)
        resolved_at = runtime.now()
        gate_was_closed = not device.gate.is_set()
        device.gate.set()
        first_outcome = await outcome_of(first)
        await runtime.stop_async()
        return outcome, resolved_at, gate_was_closed, first_outcome

    outcome, resolved_at, gate_was_closed, first_outcome = asyncio.run(main())
    assert outcome.status == "rejected" and "can no longer be met" in outcome.reason
    assert gate_was_closed  # no batch ended: the timer alone woke the controller
    assert resolved_at >= outcome.deadline - PROFILE.solo_latency("a", 1)  # not early
    assert first_outcome.status == "met"


@pytest.mark.parametrize("drain", [True, False])
def test_stop_async_finishes_or_rejects_queued_work(drain: bool) -> None:
    runtime, device = gated_runtime(max_batch=1, start=False)

    async def main():
        loop = asyncio.get_running_loop()
        runtime.start(loop)
        running, queued = await hold_slot(runtime, device)
        loop.call_later(0.05, device.gate.set)
        await runtime.stop_async(drain=drain, timeout=10.0)
        assert all(f.done() for f in [running, *queued])  # resolved when it returns
        after = runtime.submit("a", None, deadline_s=1.0)
        return running.result(), [f.result() for f in queued], after.result(timeout=0)

    running, queued, after = asyncio.run(main())
    assert running.status == "met"  # a running batch always finishes
    if drain:
        assert [o.status for o in queued] == ["met"] * 3
    else:
        assert [(o.status, o.reason) for o in queued] == [("rejected", "shutting down")] * 3
    assert (after.status, after.reason) == ("rejected", "shutting down")
    assert device.closed
    stats = runtime.stats()
    assert stats.submitted == 5 == stats.met + stats.missed + stats.rejected + stats.failed
    started = time.perf_counter()
    runtime.stop()  # stopped already: a no-op
    assert time.perf_counter() - started < 0.5


def test_stop_from_another_thread_stops_it_on_its_loop() -> None:
    runtime, device = gated_runtime(max_batch=1, start=False)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        runtime.start(loop)  # from outside the loop's thread
        device.gate.clear()
        running = runtime.submit("a", x(1), deadline_s=10.0)
        time.sleep(0.02)
        queued = [runtime.submit("b", x(1), deadline_s=10.0) for _ in range(3)]
        threading.Timer(0.05, device.gate.set).start()
        runtime.stop(drain=True, timeout=10.0)
        assert [f.result(timeout=0).status for f in [running, *queued]] == ["met"] * 4
        assert device.closed
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_stop_after_the_loop_ended_finishes_the_work_on_a_thread() -> None:
    runtime, device = gated_runtime(max_batch=1, start=False)

    async def main() -> tuple[Future, list[Future]]:
        runtime.start(asyncio.get_running_loop())
        return await hold_slot(runtime, device)

    running, queued = asyncio.run(main())  # the loop is closed, the runtime still busy
    device.gate.set()  # the running batch ends and posts to the closed loop
    time.sleep(0.05)
    assert not any(f.done() for f in [running, *queued])
    runtime.stop(drain=True, timeout=10.0)
    assert [f.result(timeout=0).status for f in [running, *queued]] == ["met"] * 4
    assert device.closed
