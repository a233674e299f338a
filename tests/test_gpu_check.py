"""The GPU check's own arithmetic (slowdown per model pair, copy shares) on hand-made
records, and `predlat study --traces` on every dataset committed under results/."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from predlat.predict.synthetic import synthetic_profile
from predlat.traces.records import BatchRecord, Overlap

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pair_slowdowns_count_only_batches_beside_one_model_for_most_of_their_life():
    gpu_check = _gpu_check()
    profile = synthetic_profile(2)
    solo = profile.solo_latency("m0", 2)
    beside = Overlap(9, "m1", 1, 0.0, 2 * solo)
    short = Overlap(9, "m1", 1, 0.0, 0.5 * solo)
    records = [
        BatchRecord(1, "m0", 2, 0, 0.0, 0.0, 2 * solo, timeline=(beside,)),  # 2x, counted
        BatchRecord(2, "m0", 2, 0, 0.0, 0.0, 3 * solo, timeline=(beside,)),  # 90% not covered
        BatchRecord(3, "m0", 2, 0, 0.0, 0.0, solo, timeline=(short,)),  # half its life
        BatchRecord(4, "m0", 2, 0, 0.0, 0.0, solo),  # alone
    ]
    pairs = gpu_check.pair_slowdowns(records, profile)
    assert list(pairs) == ["m0+m1"]
    assert pairs["m0+m1"]["batches"] == 1
    assert pairs["m0+m1"]["p50"] == pytest.approx(2.0)


def test_copy_shares_are_fractions_of_latency():
    gpu_check = _gpu_check()
    records = [
        BatchRecord(1, "m0", 1, 0, 0.0, 0.0, 1.0, phases=(0.1, 0.8, 0.1)),
        BatchRecord(2, "m0", 1, 0, 0.0, 0.0, 2.0, phases=(0.6, 1.2, 0.2)),
        BatchRecord(3, "m1", 1, 0, 0.0, 0.0, 1.0),  # no phases: not counted
    ]
    shares = gpu_check.copy_shares(records)
    assert shares == {"m0": {"copy_in": pytest.approx(0.2), "copy_out": pytest.approx(0.1)}}


DATASETS = sorted(p.parent for p in (ROOT / "results").rglob("traces.tar"))


@pytest.mark.parametrize("folder", DATASETS, ids=[p.name for p in DATASETS])
def test_committed_datasets_re_evaluate(folder: Path, tmp_path: Path) -> None:
    from predlat.cli import main

    argv = ["study", "--traces", str(folder), "--out", str(tmp_path), "--no-progress"]
    assert main([*argv, "--predictors", "solo,coarse,fine-rls"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    regime = results["main_regime"]
    assert results["regimes"][regime]["predictors"]["fine-rls"]["mean_rel_err"] > 0
