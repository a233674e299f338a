"""`predlat compare` end to end on the real device, shrunk to seconds (tiny model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from predlat.cli import main
from predlat.experiments.compare import RunResult, check_targets, pooled_metrics
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
        assert set(entry["policies"]) == {"serial", "oblivious", "coarse", "predlat"}
        for metrics in entry["policies"].values():
            assert set(metrics) >= KEYS
            for key in ("hp_met", "lp_met", "rejected_frac", "utilization"):
                assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
            assert metrics["goodput_rps"] <= metrics["throughput_rps"] + 1e-9
    # a light load of a tiny model: nearly everything meets its 20 ms deadline
    assert results["loads"]["0.0005"]["policies"]["predlat"]["hp_met"] > 0.9
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "deadlines.png" in report
    assert (out / "deadlines.png").stat().st_size > 0 and (out / "goodput.png").exists()
    assert "hp_met" in capsys.readouterr().out


def test_compare_rejects_bad_flags(tmp_path: Path, capsys) -> None:
    assert main(["compare", "--policies", "fastest", "--out", str(tmp_path)]) == 2
    assert "unknown policy 'fastest'" in capsys.readouterr().err


def test_targets_follow_the_issue_definitions() -> None:
    def pol(met: float, hp: float, good: float) -> dict:
        return {"met_frac": met, "hp_met": hp, "goodput_rps": good}

    loads = {
        "0.5": {
            "policies": {
                "serial": pol(0.95, 0.95, 50),
                "oblivious": pol(0.95, 0.9, 60),
                "coarse": pol(0.9, 0.9, 55),
                "predlat": pol(0.97, 0.99, 62),
            }
        },
        "1": {
            "policies": {
                "serial": pol(0.6, 0.7, 50),
                "oblivious": pol(0.5, 0.4, 40),
                "coarse": pol(0.7, 0.95, 55),
                "predlat": pol(0.8, 0.995, 61),
            }
        },
    }
    t = check_targets(loads)
    assert t["loads_where_oblivious_below_90pct"] == ["1"]
    assert t["hp_99_and_goodput_1_2x_serial"] is True
    assert t["never_worse_than_coarse_hp"] is True
    assert t["below_coarse_hp"] == []
    loads["1"]["policies"]["predlat"]["goodput_rps"] = 59  # 1.18 x serial
    assert check_targets(loads)["hp_99_and_goodput_1_2x_serial"] is False
    # below coarse at 0.5 by 2 of 400 high-priority requests: said, with the noise scale
    loads["0.5"]["policies"]["predlat"].update(hp_met=0.895, hp_requests=400.0)
    t = check_targets(loads)
    assert t["never_worse_than_coarse_hp"] is False
    (below,) = t["below_coarse_hp"]
    assert below["load"] == "0.5" and below["gap_requests"] == pytest.approx(2.0)
    assert below["stderr"] == pytest.approx(math.sqrt((0.895 * 0.105 + 0.09) / 400))


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
        return RunResult("predlat", 1.0, metrics, outcomes, [])

    one, two = run(99, 100, 0.5), run(290, 300, 0.7)
    assert pooled_metrics([one], 10.0) == one.metrics
    pooled = pooled_metrics([one, two], 10.0)
    assert pooled["hp_met"] == pytest.approx(389 / 400)  # over all requests, not a mean
    assert pooled["hp_requests"] == 400
    assert pooled["goodput_rps"] == pytest.approx(389 / 20.0)
    assert pooled["utilization"] == pytest.approx(0.6)
    assert pooled["hp_met_runs"] == [0.99, pytest.approx(290 / 300)]
