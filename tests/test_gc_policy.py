"""The garbage-collector policy a runtime applies while it serves."""

from __future__ import annotations

import gc

from predlat.runtime.gc_policy import GcPolicy, collections


def test_apply_freezes_raises_the_young_threshold_and_close_undoes_both() -> None:
    before = gc.get_threshold()
    applied = GcPolicy(young=12_345).apply()
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        applied.close()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
    applied.close()  # a second close changes nothing
    assert gc.get_threshold() == before


def test_passes_counts_collections_since_apply() -> None:
    applied = GcPolicy(freeze=False, young=None).apply()
    try:
        assert applied.passes() == (0, 0, 0)
        gc.collect(0)
        gc.collect()
        young, _, old = applied.passes()
        assert young >= 1 and old >= 1
        assert len(collections()) == 3
    finally:
        applied.close()


def test_a_policy_that_changes_nothing() -> None:
    before = gc.get_threshold()
    applied = GcPolicy(freeze=False, young=None).apply()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
    applied.close()
    assert gc.get_threshold() == before


def test_policies_closed_in_the_order_they_were_applied_restore_the_first_threshold() -> None:
    before = gc.get_threshold()
    first = GcPolicy(freeze=False, young=5_000).apply()
    second = GcPolicy(freeze=False, young=5_000).apply()
    first.close()
    second.close()
    assert gc.get_threshold() == before
