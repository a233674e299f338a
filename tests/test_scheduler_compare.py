"""`predlat compare` end to end on the real device, shrunk to seconds (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from predlat.cli import main
from predlat.experiments.compare_results import pooled_metrics
from predlat.experiments.compare_runs import RunResult
from predlat.scheduling.outcome import RequestOutcome, summarize
from predlat.scheduling.request import Priority

KEYS = {
    "hp_met",
    "lp_met",
    "goodput_rps",
    "throughput_rps",
    "p99_ms",
    "rejected_frac",
    "utilization",
}


@pytest.mark.slow
def test_compare_writes_report_plots_and_results(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--models",
            "tiny",
            "--loads",
            "0.0005,0.001",
            "--duration",
            "1",
            "--train-duration",
            "0.5",
            "--repeats",
            "1",
            "--bisect-steps",
            "1",
            "--deadline-ms",
            "20",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["loads"]) == {"0.0005", "0.001"}
    for entry in results["loads"].values():
        assert set(entry["policies"]) == {"serial", "serial-1t", "oblivious", "coarse", "predlat"}
        for metrics in entry["policies"].values():
            assert set(metrics) >= KEYS
            for key in ("hp_met", "lp_met", "rejected_frac", "utilization"):
                assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
            assert metrics["goodput_rps"] <= metrics["throughput_rps"] + 1e-9
    # a light load of a tiny model: nearly everything meets its 20 ms deadline
    assert results["loads"]["0.0005"]["policies"]["predlat"]["hp_met"] > 0.9
    report = (out / "report.md").read_text()
    assert "## SLO capacity" in report and "slo_capacity.png" in report
    assert (out / "deadlines.png").stat().st_size > 0 and (out / "slo_capacity.png").exists()
    assert set(results["slo_capacity"]) == set(results["config"]["policies"])
    assert "SLO capacity" in capsys.readouterr().out


def test_compare_rejects_bad_flags(tmp_path: Path, capsys) -> None:
    assert main(["compare", "--policies", "fastest", "--out", str(tmp_path)]) == 2
    assert "unknown policy 'fastest'" in capsys.readouterr().err


def test_repeated_runs_pool_their_requests() -> None:
    def run(hp_met: int, hp_total: int, utilization: float) -> RunResult:
        outcomes = [
            RequestOutcome(
                i,
                "a",
                Priority.HIGH,
                "met" if i < hp_met else "rejected",
                None,
                None,
                0.0,
                1.0,
                end=0.01 if i < hp_met else None,
            )
            for i in range(hp_total)
        ]
        metrics = summarize(outcomes, 10.0)
        metrics["utilization"] = utilization
        return RunResult("predlat", 1.0, metrics, outcomes)

    one, two = run(99, 100, 0.5), run(290, 300, 0.7)
    single = pooled_metrics([one], 10.0)
    assert single.pop("by_model") == {
        "a": {"requests": 100.0, "met_frac": 0.99, "p50_ms": 10.0, "p99_ms": 10.0}
    }
    assert single == one.metrics
    pooled = pooled_metrics([one, two], 10.0)
    assert pooled["by_model"]["a"]["met_frac"] == pytest.approx(389 / 400)
    assert pooled["hp_met"] == pytest.approx(389 / 400)  # over all requests, not a mean
    assert pooled["hp_requests"] == 400
    assert pooled["goodput_rps"] == pytest.approx(389 / 20.0)
    assert pooled["utilization"] == pytest.approx(0.6)
    assert pooled["hp_met_runs"] == [0.99, pytest.approx(290 / 300)]
    assert pooled["stderr"]["utilization"] == pytest.approx(0.1)
