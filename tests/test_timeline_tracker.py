"""TimelineTracker: the timeline a finished batch gets, and what it keeps of the record."""

from predlat.predict.timeline import TimelineTracker
from predlat.traces.records import BatchRecord


def test_finished_record_keeps_its_phases_and_gets_its_co_runners() -> None:
    tracker = TimelineTracker()
    tracker.started(1, "a", 2, 0.0)
    tracker.started(2, "b", 4, 0.5)
    first = BatchRecord(1, "a", 2, 0, 0.0, 0.0, 2.0, phases=(0.1, 1.8, 0.1))
    done = tracker.finished(first)
    assert done.phases == (0.1, 1.8, 0.1)
    assert [(o.model, o.batch_size) for o in done.timeline] == [("b", 4)]
