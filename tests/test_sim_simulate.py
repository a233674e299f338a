"""`predlat simulate`: the compare schema plus speed figures; CSV and Azure arrivals."""

from __future__ import annotations

import json

import pytest

from predlat.cli import main
from predlat.errors import ConfigError
from predlat.sim.arrivals import csv_requests
from predlat.sim.device_file import load_device, save_device


def test_simulate_cli_writes_compare_schema(tmp_path, capsys):
    dev = save_device(load_device("gpu"), tmp_path / "d.json")
    out = tmp_path / "out"
    argv = [
        "simulate",
        "--device",
        f"{dev},gpu",
        "--devices",
        "2",
        "--requests",
        "400",
        "--policies",
        "oblivious,oracle",
        "--loads",
        "0.5",
        "--out",
        str(out),
        "--keep-requests",
    ]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    entry = res["loads"]["0.5"]["policies"]["oracle"]
    assert entry["requests"] == 400
    assert entry["simulated_requests_per_wall_s"] > 0
    assert res["simulated_requests"] == 800
    assert {"capacity_rps", "deadlines_ms", "slo_capacity", "wall_s"} <= set(res)
    assert entry["live_forecast_err"] is not None
    assert (out / "report.md").read_text().startswith("# predlat simulate")
    assert (out / "deadlines.png").exists()
    assert len((out / "requests.csv").read_text().splitlines()) == 801


def test_csv_arrivals(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("timestamp,model,priority,deadline_ms\n2.0,small,high,5\n1.5,large,,\n")
    reqs = csv_requests(path, ["small", "large"], lambda m: 0.1)
    assert [(r.model, r.arrival) for r in reqs] == [("large", 0.0), ("small", 0.5)]
    assert reqs[1].deadline == pytest.approx(0.505)
    assert reqs[1].priority.name == "HIGH"
    path.write_text("timestamp,model\n1,nope\n")
    with pytest.raises(ConfigError, match="nope"):
        csv_requests(path, ["small"], lambda m: 0.1)


def test_azure_functions_trace(tmp_path):
    path = tmp_path / "az.csv"
    path.write_text(
        "HashOwner,HashApp,HashFunction,Trigger,1,2,3\no,a,f1,http,2,0,1\no,a,f2,timer,0,3,0\n"
    )
    reqs = csv_requests(path, ["large", "small"], lambda m: 0.1, seed=1)
    assert len(reqs) == 6
    assert sum(r.model == "large" for r in reqs) == 3
    assert all(60 <= r.arrival < 120 for r in reqs if r.model == "small")
    assert [r.arrival for r in reqs] == sorted(r.arrival for r in reqs)
    assert len(csv_requests(path, ["large", "small"], lambda m: 0.1, limit=4)) == 4


def test_simulate_rejects_unknown_policy(tmp_path, capsys):
    assert main(["simulate", "--policies", "nope", "--out", str(tmp_path)]) == 2
    assert "policies" in capsys.readouterr().err


@pytest.mark.parametrize("process", ["poisson", "bursty"])
def test_synthetic_stream_exact_count_and_rate(process):
    from predlat.sim.arrivals import synthetic_requests

    reqs = list(
        synthetic_requests(
            {"a": 300.0, "b": 100.0}, 100_000, lambda m: 0.1, seed=0, process=process, hp_frac=0.25
        )
    )
    assert len(reqs) == 100_000
    times = [r.arrival for r in reqs]
    assert times == sorted(times)
    assert 100_000 / times[-1] == pytest.approx(400.0, rel=0.1)
    assert sum(r.model == "a" for r in reqs) / 100_000 == pytest.approx(0.75, abs=0.02)
    assert sum(r.priority.name == "HIGH" for r in reqs) / 100_000 == pytest.approx(0.25, abs=0.02)


def test_simulate_cli_replays_a_csv(tmp_path):
    path = tmp_path / "a.csv"
    rows = "".join(f"{i * 0.01},{'small' if i % 2 else 'large'}\n" for i in range(300))
    path.write_text("timestamp,model\n" + rows)
    out = tmp_path / "out"
    argv = [
        "simulate",
        "--arrivals",
        str(path),
        "--policies",
        "predlat",
        "--devices",
        "2",
        "--route",
        "least-loaded",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    (entry,) = res["loads"].values()
    assert entry["policies"]["predlat"]["requests"] == 300


def test_simulate_bisects_slo_capacity_as_compare_defines_it():
    from predlat.experiments.simulate import SimulateConfig, run_simulate

    config = SimulateConfig(
        requests=600, policies=("coarse", "oracle"), loads=(0.5, 3.0), bisect_steps=2
    )
    res = run_simulate(config)
    assert res["slo"] == {"hp_met": 0.99, "met_frac": 0.95}
    for policy in config.policies:
        cap = res["slo_capacity"][policy]
        tested = cap["tested"][0]
        assert [x for x, _ in tested][:2] == [0.5, 3.0] and len(tested) == 4
        assert tested[1][1] is False  # three times capacity is over it
        met = [x for x, ok in tested if ok]
        assert cap["load"] == max(met) and cap["first_miss_rps"][0] is not None
    assert "oracle" in res["ratios"]["slo_capacity"]
    # the bisection's runs count in the speed figures too
    assert res["simulated_requests"] == 600 * 4 * len(config.policies)


def _without_timing(value):
    """`value` (results, nested) without wall times and the rates made from them."""
    timing = ("wall_s", "simulated_requests_per_wall_s", "simulated_requests_per_command_s")
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in (*timing, "jobs")}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


@pytest.mark.parametrize(
    "route, devices",
    [("predlat", 1), ("round-robin", 3)],  # round-robin: each run split in two shards too
)
def test_simulate_results_do_not_depend_on_worker_processes(route, devices):
    from dataclasses import replace

    from predlat.experiments.simulate import SimulateConfig, run_simulate

    config = SimulateConfig(
        route=route,
        devices=devices,
        requests=500,
        policies=("coarse", "oracle"),
        loads=(0.5, 3.0),
        bisect_steps=1,
        keep_requests=True,
    )
    one = run_simulate(config)
    two = run_simulate(replace(config, jobs=2))
    assert two["jobs"] == 2 and two["simulated_requests"] == 500 * 3 * 2
    kept = two["_outcomes"]
    assert sorted(kept) == ["0.5/coarse", "0.5/oracle", "1.75/coarse", "1.75/oracle",
                            "3/coarse", "3/oracle"]  # fmt: skip
    assert kept == one["_outcomes"]  # every request's outcome, not only the figures
    same = {"default": str, "sort_keys": True}
    assert json.dumps(_without_timing(one), **same) == json.dumps(_without_timing(two), **same)


def test_simulate_refuses_no_jobs(tmp_path, capsys):
    argv = ["simulate", "--requests", "10", "--jobs", "0", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "jobs must be at least 1, got 0" in capsys.readouterr().err


def test_simulate_refuses_an_out_that_is_a_file_before_running(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("")
    assert main(["simulate", "--requests", "10", "--out", str(out)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
