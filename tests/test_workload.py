"""Arrival processes: seeded, right rates, validated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from predlat.errors import ConfigError
from predlat.workload import bursty_times, open_loop_workload, poisson_times, replay_workload


def test_poisson_rate_and_order():
    times = poisson_times(200.0, 50.0, np.random.default_rng(1))
    assert abs(len(times) / 50.0 - 200.0) < 10
    assert np.all(np.diff(times) >= 0) and times.min() >= 0 and times.max() < 50


def test_bursty_keeps_mean_rate_but_is_burstier():
    rng = np.random.default_rng(2)
    bursty = bursty_times(100.0, 200.0, rng)
    poisson = poisson_times(100.0, 200.0, np.random.default_rng(2))
    assert abs(len(bursty) / 200.0 - 100.0) < 15
    # Counts per 100 ms window vary more than Poisson's.
    b_counts = np.histogram(bursty, bins=2000, range=(0, 200))[0]
    p_counts = np.histogram(poisson, bins=2000, range=(0, 200))[0]
    assert b_counts.var() > 1.5 * p_counts.var()


def test_workload_is_seeded_and_mixed():
    a = open_loop_workload({"m1": 20, "m2": 10}, 5.0, seed=3, hp_frac=0.25)
    b = open_loop_workload({"m2": 10, "m1": 20}, 5.0, seed=3, hp_frac=0.25)
    assert a == b
    assert {x.model for x in a} == {"m1", "m2"}
    hp = sum(x.high_priority for x in a) / len(a)
    assert 0.1 < hp < 0.4
    assert all(x.time <= y.time for x, y in itertools.pairwise(a))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"process": "weird"},
        {"hp_frac": 1.5},
        {"duration": 0.0},
    ],
)
def test_nonsense_workload_is_refused(kwargs):
    args = {"rates": {"m": 1.0}, "duration": 1.0, "seed": 0} | kwargs
    with pytest.raises(ConfigError):
        open_loop_workload(**args)


def test_replay_from_csv(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("time,model,high_priority\n0.5,b,true\n0.1,a,false\n")
    arrivals = replay_workload(path)
    assert [(a.time, a.model, a.high_priority) for a in arrivals] == [
        (0.1, "a", False),
        (0.5, "b", True),
    ]


def test_replay_needs_columns(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("t,m\n0.5,b\n")
    with pytest.raises(ConfigError, match="needs columns"):
        replay_workload(path)
