"""Validation: compare's runs on a "real" device (here a simulated one with a known law)
and on the device calibrated from its warm-up history agree; a wrong device does not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from predlat.experiments.compare import CompareConfig
from predlat.experiments.compare_runs import RunResult, RunSpec, Setup
from predlat.experiments.validate import QuietRunner, SimRunner, differences, run_validate
from predlat.experiments.validate_report import write_validate_outputs
from predlat.predict.predictors import make_predictor
from predlat.scheduling.policies import get_policy
from predlat.sim.device_file import DeviceSpec, load_device
from predlat.sim.replay import random_colocation
from predlat.traces.collect import device_capacity

PAIRS = {("large", "medium"): 0.4, ("medium", "large"): 0.25, ("small", "small"): 0.15}
CONFIG = CompareConfig(
    policies=("serial", "oblivious", "predlat"),
    loads=(0.4, 0.8, 1.2),
    duration_s=8.0,
    slots=2,
    repeats=1,
    bisect_steps=1,
    deadline_factor=8.0,
)


def _known(pair_scale: float = 1.0) -> DeviceSpec:
    spec = load_device("cpu4")  # three models, 10 to 200 ms
    pairs = {k: v * pair_scale for k, v in PAIRS.items()}
    law = replace(
        spec.law,
        pairs=pairs,
        cores=None,
        base=0.05 * pair_scale,
        compute=0.0,
        memory=0.0,
        noise_sigma=0.02,
        noise_per_corunner=0.01,
    )
    return replace(spec, law=law, slots=2)


def _setup(spec: DeviceSpec) -> Setup:
    profile = spec.profile(cv=0.0)
    models = tuple(sorted(spec.models))
    records = random_colocation(spec, 2, 500, seed=3, gap_s=0.02)
    fitted = {n: make_predictor(n, profile).fit(records) for n in ("solo", "fine-rls")}
    deadlines = {m: CONFIG.deadline_factor * profile.solo_latency(m, 1) for m in models}
    return Setup(
        models,
        profile,
        device_capacity(profile, models, 2),
        deadlines,
        fitted,
        {"batches": len(records), "seconds": 0.0, "loads": [], "predictors": {}},
        records,
    )


def _validate(real_device: DeviceSpec):
    truth = _known()
    setup = _setup(truth)  # the warm-up history comes from the true device

    def same(threads: int):  # every thread count: the same device (no serial profile)
        return real_device, setup.profile

    real = SimRunner(CONFIG, setup, real_device, same)
    return run_validate(
        CONFIG, setup=setup, real_runner=real, profile_for=lambda threads: setup.profile
    )


def test_calibrated_device_matches_the_real_one_on_the_same_workload(tmp_path):
    results = _validate(_known())
    by_policy = results["differences"]["by_policy"]
    assert set(by_policy) == {"serial", "oblivious", "predlat"}
    # by default the noise stays the fitted log-normal and the hand-offs their medians
    assert results["calibration"]["noise_table_batches"] == 0
    assert "table" not in results["device"]["noise"]
    assert "dispatch_table" not in results["device"].get("handoff", {})
    for p, d in by_policy.items():
        assert d["max_abs_d_p99_ms_pct"] <= 20.0, p
        if p != "serial":  # one slot far past its capacity: misses swing with the noise
            assert d["d_capacity_pct"] == pytest.approx(0.0, abs=10.0), p
            assert d["max_abs_d_met_frac_pp"] <= 3.0, p
            assert d["max_abs_d_hp_met_pp"] <= 3.0, p
    paths = write_validate_outputs(results, tmp_path / "v")
    text = paths["report"].read_text()
    assert "## Per policy" in text and "oblivious" in text
    assert "## Per model" in text
    models = {"small", "medium", "large"}  # (the known device's models)
    for p, d in by_policy.items():  # the same device: like agrees with like, per model too
        assert set(d["by_model"]) == models, p
        if p != "serial":
            assert all(m["max_abs_d_p50_ms_pct"] <= 15.0 for m in d["by_model"].values()), p
    assert "other processes' CPU share meanwhile: n/a" in text  # no meter on a virtual clock
    assert "its hand-offs are constants (medians)" in text
    assert paths["plot"].stat().st_size > 0 and paths["device"].is_file()
    assert (tmp_path / "v" / "real" / "report.md").is_file()


def test_a_device_that_is_not_the_calibrated_one_shows_up():
    results = _validate(_known(pair_scale=3.0))  # "real" interferes three times as much
    worst = results["differences"]["by_policy"]["oblivious"]
    assert worst["max_abs_d_p99_ms_pct"] > 20.0


def test_hand_offs_are_fitted_on_a_probe_run_that_no_comparison_uses(tmp_path):
    ms = 1e-3
    plain = _known()
    truth = replace(
        plain,
        law=replace(plain.law, arrival_s=0.2 * ms, dispatch_s=0.4 * ms, completion_s=0.3 * ms),
    )
    setup = _setup(plain)
    real = SimRunner(CONFIG, setup, truth, lambda threads: (truth, setup.profile))
    specs: list[RunSpec] = []

    def runner(spec: RunSpec) -> RunResult:
        specs.append(spec)
        return real(spec)

    results = run_validate(
        CONFIG,
        setup=setup,
        real_runner=runner,
        profile_for=lambda threads: setup.profile,
        measured_tail=True,
    )
    probe, *compared = specs
    assert probe.seed not in {s.seed for s in compared}
    assert probe.policy.name == CONFIG.ours
    handoff = results["calibration"]["handoff"]
    for name, value in (("arrival", 0.2), ("dispatch", 0.4), ("completion", 0.3)):
        assert handoff[f"{name}_ms"] == pytest.approx(value, abs=1e-6), name
    assert results["device"]["handoff"]["dispatch_s"] == pytest.approx(0.4 * ms, abs=1e-9)
    row = results["simulated"]["loads"]["0.4"]["policies"]["oblivious"]
    assert row["dispatch_lag_p50_ms"] == pytest.approx(0.4, abs=1e-6)
    # asked to, the probe's batches set the noise: a table measured on them (version 3)
    assert results["calibration"]["noise_table_batches"] > 0
    assert results["device"]["version"] == 3 and "table" in results["device"]["noise"]
    text = write_validate_outputs(results, tmp_path / "v")["report"].read_text()
    assert "hand-offs are drawn from the probe's gaps" in text  # says what this run did


def test_differences_are_simulated_minus_real():
    def side(met: float, p99: float, cap: float) -> dict:
        entry = {"met_frac": met, "hp_met": met, "p50_ms": 1.0, "p99_ms": p99}
        entry["by_model"] = {"m": {"p50_ms": 2.0 * p99, "p99_ms": p99}}
        return {
            "config": {"policies": ["a"]},
            "loads": {"0.5": {"policies": {"a": entry}}},
            "slo_capacity": {"a": {"rps": cap}},
        }

    d = differences(side(0.90, 10.0, 100.0), side(0.95, 12.0, 90.0))
    (row,) = d["by_load"]
    assert row["d_met_frac_pp"] == pytest.approx(5.0)
    assert row["d_p99_ms_pct"] == pytest.approx(20.0)
    assert d["by_policy"]["a"]["d_capacity_pct"] == pytest.approx(-10.0)
    assert row["by_model"]["m"]["d_p50_ms_pct"] == pytest.approx(20.0)
    assert d["by_policy"]["a"]["by_model"]["m"]["max_abs_d_p99_ms_pct"] == pytest.approx(20.0)


def test_quiet_runner_repeats_a_run_shared_with_other_processes_and_keeps_the_quietest():
    def runner_of(shares: list[float]):
        left = list(shares)
        return lambda spec: RunResult(
            spec.policy.name, spec.load, {"foreign_cpu_frac": left.pop(0)}
        )

    spec = RunSpec(get_policy("serial"), 0.6, 0)
    busy = QuietRunner(runner_of([0.3, 0.2, 0.25, 0.0]), limit=0.1, tries=3)
    assert busy(spec).metrics["foreign_cpu_frac"] == 0.2  # three runs, never quiet
    quiet = QuietRunner(runner_of([0.3, 0.05, 0.0]), limit=0.1)
    assert quiet(spec).metrics["foreign_cpu_frac"] == 0.05  # stops at the first quiet run
    assert (busy.runs, quiet.runs) == ({("serial", 0.6, 0): 3}, {("serial", 0.6, 0): 2})
    real = {
        "config": {"policies": ["serial"], "seed": 0, "repeats": 1},
        "loads": {"0.6": {"policies": {"serial": {"met_frac": 1.0}}}},
        "slo_capacity": {"serial": {"rps": 1.0}},
    }
    (row,) = differences(real, real, busy.runs)["by_load"]
    assert row["real_runs"] == 3


def test_validate_rejects_bad_flags_before_running_anything(tmp_path, capsys):
    from predlat.cli import main

    assert main(["validate", "--policies", "fastest", "--out", str(tmp_path)]) == 2
    assert "unknown policy 'fastest'" in capsys.readouterr().err
    assert main(["validate", "--train-duration", "0", "--out", str(tmp_path)]) == 2
    assert "--train-duration" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["validate", "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
