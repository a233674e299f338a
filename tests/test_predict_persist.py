"""Fitted predictors saved and loaded: same predictions, same online learning, and a
clear error against another profile."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from predlat.errors import PredlatError
from predlat.predict import Forecaster, RunningBatch, make_predictor
from predlat.predict.persist import PredictorFileError, load_predictor, save_predictor
from predlat.predict.synthetic import SlowdownLaw, law_records, synthetic_profile

PROFILE = synthetic_profile(seed=0)
LAW = SlowdownLaw(count=0.1, compute=0.3, memory=0.15)


@pytest.mark.parametrize("name", ["fine-rls", "coarse", "ewma", "fine-sgd", "solo"])
def test_round_trip_predicts_and_learns_identically(tmp_path: Path, name: str) -> None:
    records = law_records(PROFILE, LAW, 300, seed=1)
    fitted = make_predictor(name, PROFILE).fit(records[:200])
    path = save_predictor(fitted, PROFILE, tmp_path / "p.json")
    loaded = load_predictor(path, PROFILE)
    assert type(loaded) is type(fitted) and loaded.name == name
    for rec in records[200:]:  # predict, then learn: both stay identical
        assert loaded.predict(rec) == fitted.predict(rec)
        assert loaded.predict_quantile(rec, 0.9) == fitted.predict_quantile(rec, 0.9)
        fitted.learn_one(rec)
        loaded.learn_one(rec)
    assert loaded.predict(records[0]) == fitted.predict(records[0])


def test_loaded_predictor_forecasts_like_the_fitted_one(tmp_path: Path) -> None:
    records = law_records(PROFILE, LAW, 200, seed=2)
    fitted = make_predictor("fine-rls", PROFILE).fit(records)
    loaded = load_predictor(save_predictor(fitted, PROFILE, tmp_path / "p.json"), PROFILE)
    model = next(iter(PROFILE.models))
    ends = []
    for p in (fitted, copy.deepcopy(loaded)):
        fc = Forecaster(p, PROFILE, quantile=0.95)
        fc.on_dispatch(RunningBatch(1, model, 2, 0.0), 0.01)
        ends.append(fc.forecast(0.0, (RunningBatch(2, model, 4, 0.0),))[2])
    assert ends[0] == ends[1]


def test_loading_against_another_profile_is_a_clear_error(tmp_path: Path) -> None:
    profile = copy.deepcopy(PROFILE)
    profile.digests = {m: "a" * 64 for m in profile.models}
    fitted = make_predictor("fine-rls", profile).fit(law_records(profile, LAW, 100, seed=3))
    path = save_predictor(fitted, profile, tmp_path / "p.json")
    assert load_predictor(path, copy.deepcopy(profile)).predict(law_records(profile, LAW, 1)[0])
    other = synthetic_profile(seed=5)
    other.digests = dict(profile.digests)
    with pytest.raises(PredictorFileError, match="fitted against another profile"):
        load_predictor(path, other)
    changed = copy.deepcopy(profile)
    changed.digests = {m: "0" * 64 for m in changed.models}
    with pytest.raises(PredictorFileError, match="model files changed"):
        load_predictor(path, changed)


def test_not_a_predictor_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(PredictorFileError, match="not a predlat predictor file"):
        load_predictor(bad, PROFILE)
    foreign = tmp_path / "y.json"
    foreign.write_text(
        '{"format": "predlat-predictor", "format_version": 4, "profile": {}, "state": {}}'
    )
    with pytest.raises(PredictorFileError, match="another profile"):
        load_predictor(foreign, PROFILE)
    old = tmp_path / "z.json"
    for version in (1, 2, 3):  # 2: before the RLS prior; 3: before the demand products
        old.write_text(f'{{"format": "predlat-predictor", "format_version": {version}}}')
        with pytest.raises(PredictorFileError, match="fit it again"):
            load_predictor(old, PROFILE)


def test_fit_command_writes_a_predictor_that_loads(tmp_path: Path, capsys) -> None:
    from predlat.cli import main
    from predlat.models import resolve_models
    from predlat.profiling.profiler import load_or_profile
    from predlat.runtime.build import BATCH_SIZES, REPEATS
    from predlat.traces.records import BatchRecord, attach_timelines
    from predlat.traces.trace_file import write_trace

    records = []
    for i in range(40):  # two overlapping streams of a tiny model
        t = 0.01 * i
        records.append(BatchRecord(i, "tiny", 1 + i % 4, i % 2, t, t, t + 0.004 + 0.001 * (i % 3)))
    write_trace(tmp_path / "traces" / "a.parquet", attach_timelines(records), {"models": ["tiny"]})
    out = tmp_path / "fine.json"
    code = main(["fit", "--traces", str(tmp_path / "traces"), "--out", str(out), "--no-progress"])
    assert code == 0 and "fitted on 40 batches" in capsys.readouterr().out
    profile = load_or_profile(resolve_models(["tiny"]), BATCH_SIZES, REPEATS, progress=False)
    assert load_predictor(out, profile).name == "fine-rls"
    assert main(["fit", "--traces", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    # serve's wiring: the runtime's scheduler forecasts with the saved predictor
    from predlat.runtime import build_runtime

    runtime, _ = build_runtime(
        ["tiny"], slots=2, policy="predlat", progress=False, predictor_file=out
    )
    try:
        fc = runtime.scheduler.forecaster
        assert fc.predictor.name == "fine-rls" and fc.predictor.profile is runtime.profile
    finally:
        runtime.device.close()
    with pytest.raises(PredlatError, match="forecasts with 'coarse'"):
        build_runtime(["tiny"], slots=2, policy="coarse", progress=False, predictor_file=out)


def test_named_tuples_in_predictor_state_keep_their_class(tmp_path: Path) -> None:
    from predlat.traces.records import Overlap

    fitted = make_predictor("coarse", PROFILE).fit(law_records(PROFILE, LAW, 50, seed=1))
    fitted.recent = [Overlap(3, "m", 2, 0.5, 1.5)]  # (a NamedTuple a predictor might keep)
    loaded = load_predictor(save_predictor(fitted, PROFILE, tmp_path / "p.json"), PROFILE)
    (overlap,) = loaded.recent
    assert type(overlap) is Overlap and overlap == fitted.recent[0]
    assert overlap.duration == 1.0


def _edited(tmp_path: Path, edit) -> Path:
    fitted = make_predictor("fine-rls", PROFILE).fit(law_records(PROFILE, LAW, 100, seed=3))
    path = save_predictor(fitted, PROFILE, tmp_path / "p.json")
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


def _first_nd(node):
    """The first numpy array entry in a saved state."""
    if isinstance(node, dict):
        if node.get("t") == "nd":
            return node
        node = list(node.values())
    for child in node if isinstance(node, list) else []:
        found = _first_nd(child)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d.update(format_version="4"), "format_version '4' is not an integer"),
        (lambda d: d.pop("state"), "needs 'profile' and 'state'"),
        (lambda d: d.update(profile=[]), "needs 'profile' and 'state'"),
        (lambda d: d["state"].pop("cls"), "corrupt predictor state"),
        (lambda d: d["state"].update(v=[1]), "corrupt predictor state"),
        (lambda d: _first_nd(d["state"]).update(dtype="nosuch"), "corrupt predictor state"),
        (lambda d: _first_nd(d["state"]).update(shape=[999, 7]), "corrupt predictor state"),
    ],
)
def test_an_edited_predictor_file_is_a_clear_error(tmp_path: Path, edit, named) -> None:
    with pytest.raises(PredictorFileError, match=named):
        load_predictor(_edited(tmp_path, edit), PROFILE)
