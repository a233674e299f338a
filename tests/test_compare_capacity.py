"""SLO capacity search and the comparison's bookkeeping, with a fake device: a policy
meets the SLO below a known load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predlat.experiments.capacity import Bisection, Slo, find_capacity
from predlat.experiments.compare import CompareConfig, policy_order, regime, run_compare
from predlat.experiments.compare_report import write_outputs
from predlat.experiments.compare_runs import RunResult, RunSpec, Setup
from predlat.predict.synthetic import synthetic_profile
from predlat.scheduling.policies import POLICY_NAMES, get_policy, parse_quantile

THRESHOLDS = {"serial": 0.33, "serial-1t": 0.21, "oblivious": 0.4, "coarse": 0.55, "predlat": 0.7}


def test_bisection_finds_a_known_threshold() -> None:
    for threshold in (0.05, 0.37, 0.61, 0.99):
        search = find_capacity(lambda x, t=threshold: x <= t, (0.25, 0.5, 0.75, 1.0), steps=8)
        assert search.lo <= threshold < search.hi
        assert search.hi - search.lo <= 0.25 / 2**8 + 1e-12
    above = find_capacity(lambda x: True, (0.25, 0.5), steps=3)
    assert above.censored and above.lo == 0.5 and above.next_load() is None


def test_bracket_stops_at_the_first_miss_even_if_a_higher_load_meets() -> None:
    search = Bisection.from_sweep({0.25: True, 0.5: False, 0.75: True}, steps=1)
    assert (search.lo, search.hi) == (0.25, 0.5) and search.next_load() == 0.375


def test_slo_counts_rejections_as_misses_and_needs_both_fractions() -> None:
    slo = Slo(hp=0.99, all=0.95)
    assert slo.met({"hp_met": 0.99, "met_frac": 0.95})
    assert not slo.met({"hp_met": 0.989, "met_frac": 1.0})
    assert not slo.met({"hp_met": 1.0, "met_frac": 0.94})
    assert slo.met({"hp_met": None, "met_frac": 0.97})  # no high-priority requests


def test_quantile_is_one_setting_for_every_predictive_policy() -> None:
    for q in (0.9, None):
        for name in POLICY_NAMES:
            policy = get_policy(name, q)
            assert policy.quantile == q
            assert policy.plans_at_quantile == (q is not None and policy.predictive)
    assert get_policy("coarse").plans_at_quantile and get_policy("predlat").plans_at_quantile
    assert parse_quantile("mean") is None and parse_quantile("0.9") == 0.9
    with pytest.raises(Exception, match="quantile"):
        parse_quantile("1.5")


def test_policy_order_is_seeded() -> None:
    names = list(POLICY_NAMES)
    assert policy_order(names, 0, 0, 1, 2) == policy_order(names, 0, 0, 1, 2)
    orders = {tuple(policy_order(names, s, 0, 0, 0)) for s in range(20)}
    assert len(orders) > 5 and all(sorted(o) == sorted(names) for o in orders)


def test_regimes() -> None:
    assert regime(2, 1, "onnxruntime", cores=2) == "spatial"
    assert regime(4, 1, "onnxruntime", cores=2) == "oversubscribed"


class FakeRunner:
    """Meets the SLO below each policy's threshold; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[RunSpec] = []

    def __call__(self, spec: RunSpec) -> RunResult:
        self.calls.append(spec)
        met = spec.load <= THRESHOLDS[spec.policy.name]
        metrics = {
            "hp_met": 1.0 if met else 0.9,
            "met_frac": 0.99 if met else 0.8,
            "live_forecast_err": 0.1 + 0.01 * spec.seed,
            "planned_end_exceeded": 0.05,
            "mean_batch_size": 1.5,
        }
        return RunResult(spec.policy.name, spec.load, metrics, [])


def _setup() -> Setup:
    profile = synthetic_profile(seed=0)
    models = tuple(profile.models)
    history = {"batches": 0, "seconds": 0.0, "loads": [], "predictors": {}}
    return Setup(models, profile, 100.0, dict.fromkeys(models, 0.05), history=history)


def test_compare_results_carry_capacity_quantile_and_live_error(tmp_path: Path) -> None:
    config = CompareConfig(
        loads=(0.25, 0.5, 0.75, 1.0), repeats=2, bisect_steps=3, quantile=None, slots=2
    )
    runner = FakeRunner()
    results = run_compare(config, setup=_setup(), runner=runner)
    assert {s.policy.quantile for s in runner.calls} == {None}  # the flag reached all
    assert results["quantile"] == "mean" and results["regime"] in ("spatial", "oversubscribed")
    for name, threshold in THRESHOLDS.items():
        cap = results["slo_capacity"][name]
        assert cap["rps"] <= threshold * 100 < cap["rps"] + 0.25 / 8 * 100 + 1e-9
        assert cap["stderr"] == 0.0  # the fake is the same at every seed
    for entry in results["loads"].values():
        assert len(entry["order"]) == 2 and set(entry["order"][0]) == set(POLICY_NAMES)
        for m in entry["policies"].values():
            assert m["live_forecast_err"] == pytest.approx(0.105)
            assert m["stderr"]["live_forecast_err"] == pytest.approx(0.005)
    assert results["ratios"]["slo_capacity"]["coarse"]["value"] == pytest.approx(
        results["slo_capacity"]["predlat"]["rps"] / results["slo_capacity"]["coarse"]["rps"]
    )
    assert results["ratios"]["live_forecast_err"]["0.5"]["coarse"]["value"] == pytest.approx(1.0)
    paths = write_outputs(results, tmp_path / "out")
    saved = json.loads(paths["results"].read_text())
    assert saved["slo_capacity"]["predlat"].keys() >= {"rps", "stderr"}
    assert "## SLO capacity" in paths["report"].read_text()
    assert paths["capacity_plot"].stat().st_size > 0


def test_same_seed_same_runs() -> None:
    config = CompareConfig(loads=(0.3, 0.6), repeats=1, bisect_steps=2, slots=2)
    a, b = FakeRunner(), FakeRunner()
    run_compare(config, setup=_setup(), runner=a)
    run_compare(config, setup=_setup(), runner=b)
    assert [(s.policy.name, s.load, s.seed) for s in a.calls] == [
        (s.policy.name, s.load, s.seed) for s in b.calls
    ]


def test_quantile_reaches_the_schedulers_of_the_simulated_device() -> None:
    from predlat.sim import SyntheticModel, build_simulation
    from predlat.sim import synthetic_profile as sim_profile

    profile = sim_profile({"a": SyntheticModel(0.01, 0.004, compute=0.5, memory=0.5)})
    for name in POLICY_NAMES:
        sim = build_simulation(profile, ["a"], policy=name, slots=2, quantile=0.8)
        (sched,) = sim.schedulers
        assert sched.policy.quantile == 0.8
        assert sched.policy.plans_at_quantile == (name in ("coarse", "predlat"))


def test_capacity_stderr_is_over_seeds() -> None:
    searches = [
        find_capacity(lambda x, t=t: x <= t, (0.25, 0.5, 0.75, 1.0), steps=10)
        for t in (0.3, 0.5, 0.7)
    ]
    from predlat.experiments.capacity import pooled_capacity

    pooled = pooled_capacity(searches, unit_rps=200.0)
    los = [s.lo for s in searches]
    assert pooled["rps"] == pytest.approx(200.0 * sum(los) / 3)
    assert pooled["stderr"] == pytest.approx(200.0 * float(np.std(los, ddof=1)) / 3**0.5)
    assert pooled["rps"] == pytest.approx(100.0, abs=0.5)
