"""Timelines attached to finished batches."""

from __future__ import annotations

import pytest

from predlat.traces import BatchRecord, attach_timelines


def rec(i, start, end, model="m", n=1, device=0):
    return BatchRecord(i, model, n, slot=i % 4, dispatch=start, start=start, end=end, device=device)


def test_overlaps_are_clipped_and_symmetric():
    records = attach_timelines([rec(1, 0.0, 10.0), rec(2, 2.0, 4.0, "x", 4), rec(3, 8.0, 12.0)])
    by_id = {r.batch_id: r for r in records}
    first = by_id[1]
    assert [(o.batch_id, o.start, o.end) for o in first.timeline] == [(2, 2.0, 4.0), (3, 8.0, 10.0)]
    assert first.timeline[0].model == "x" and first.timeline[0].batch_size == 4
    assert [(o.batch_id, o.start, o.end) for o in by_id[3].timeline] == [(1, 8.0, 10.0)]
    assert by_id[2].timeline[0].duration == pytest.approx(2.0)


def test_co_runners_at_start_only_sees_those_already_running():
    records = {r.batch_id: r for r in attach_timelines([rec(1, 0, 10), rec(2, 5, 15)])}
    assert [o.batch_id for o in records[2].co_runners_at_start()] == [1]
    assert records[1].co_runners_at_start() == ()


def test_devices_do_not_mix_and_touching_batches_do_not_overlap():
    records = attach_timelines([rec(1, 0, 5, device=0), rec(2, 1, 6, device=1), rec(3, 5, 7)])
    assert all(r.timeline == () for r in records)
    assert [r.batch_id for r in records] == [1, 2, 3]  # ordered by end time
