"""A replica's runtime without Ray: requests run on the event loop they arrive on, and
closing the replica there drains its work (Serve calls the destructor on that loop)."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from predlat.cluster.messages import Route
from predlat.cluster.replica import PredlatReplica, ReplicaConfig
from predlat.scheduling.request import Priority


def _route(rows: int = 1) -> Route:
    return Route("tiny", rows, Priority.LOW, time.time() + 5.0)


def test_closing_on_the_hosting_loop_drains_the_queued_work() -> None:
    replica = PredlatReplica(ReplicaConfig(("tiny",)))
    x = {"x": np.ones((1, 16), dtype=np.float32)}

    async def serve_then_close() -> list:
        first = await replica.infer(_route(), x)  # the runtime now runs on this loop
        queued = [asyncio.ensure_future(replica.infer(_route(), x)) for _ in range(6)]
        await asyncio.sleep(0)  # (they reach the runtime before it closes)
        assert replica.runtime.hosted_here()
        closing = replica.close()
        assert closing is not None  # a blocking stop here would wait on this very loop
        await closing
        return [first, *await asyncio.gather(*queued)]

    outcomes = asyncio.run(serve_then_close())
    assert [o.status for o in outcomes] == ["met"] * 7
    assert not replica.runtime.hosted_here()
    assert replica.close() is None  # once stopped, closing again is a no-op


def test_closing_off_the_loop_stops_a_thread_hosted_runtime_now() -> None:
    replica = PredlatReplica(ReplicaConfig(("tiny",)))
    replica.runtime.start()  # a control thread, not a loop
    assert not replica.runtime.hosted_here()
    assert replica.close() is None
