"""Per-model queues: dispatch order and the prefixes batching reads."""

from __future__ import annotations

from predlat.scheduling.queues import ModelQueue
from predlat.scheduling.request import Priority, Request


def queue_of(*specs: tuple[int, float, Priority, int]) -> ModelQueue:
    q = ModelQueue("m")
    for rid, deadline, priority, size in specs:
        q.push(Request(rid, "m", 0.0, deadline, priority, size))
    return q


def test_prefix_is_in_dispatch_order_and_fits_max_rows() -> None:
    q = queue_of(
        (1, 5.0, Priority.LOW, 1),
        (2, 9.0, Priority.HIGH, 2),
        (3, 1.0, Priority.LOW, 1),
        (4, 3.0, Priority.HIGH, 1),
    )
    assert [r.request_id for r in q.ordered()] == [4, 2, 3, 1]
    assert [r.request_id for r in q.prefix(8)] == [4, 2, 3, 1]
    assert [r.request_id for r in q.prefix(3)] == [4, 2]  # 3 rows: full
    assert [r.request_id for r in q.prefix(2)] == [4]  # request 2 would not fit
    q.remove_prefix(q.prefix(3))
    assert [r.request_id for r in q.ordered()] == [3, 1]


def test_prefix_holds_the_head_even_when_it_alone_is_larger() -> None:
    q = queue_of((1, 1.0, Priority.LOW, 5), (2, 2.0, Priority.LOW, 1))
    assert [r.request_id for r in q.prefix(4)] == [1]
    assert ModelQueue("m").prefix(4) == []
