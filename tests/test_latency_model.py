"""LatencyModel: the library example in the README runs, timelines are kept by the model,
and a predictor of one's own plugs in through the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from predlat import LatencyModel
from predlat.errors import ConfigError
from predlat.predict import PREDICTORS, RunningBatch, register_predictor
from predlat.predict.synthetic import synthetic_profile
from predlat.traces.records import BatchRecord

README = Path(__file__).resolve().parents[1] / "README.md"
PROFILE = synthetic_profile()


def test_readme_library_example_runs(tmp_path, monkeypatch, capsys) -> None:
    text = README.read_text()
    section = text[text.index("## Library") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert re.search(r"\d+\.\d\d ms, p95 \d+\.\d\d ms", capsys.readouterr().out)
    loaded = LatencyModel.load(tmp_path / "fine-rls.json", PROFILE)
    assert loaded.predictor.name == "fine-rls"


class HalfPerCoRunner:
    """A user's predictor: each co-runner present at the start adds half the solo time."""

    name = "half"
    kind = "coarse"
    version = 0

    def __init__(self, profile) -> None:
        self.learned: list[BatchRecord] = []

    def slowdown_parts(self, model: str, batch_size: int):
        return 1.0, (0.5, 0.0, 0.0)

    def learn_one(self, record: BatchRecord) -> None:
        self.learned.append(record)


def test_own_predictor_plugs_in_and_model_keeps_timelines() -> None:
    register_predictor("half", HalfPerCoRunner)
    try:
        model = LatencyModel(PROFILE, "half")
        solo = PROFILE.solo_latency("m1", 2)
        assert model.predict_one(RunningBatch(9, "m1", 2, 0.0), now=0.0).mean == pytest.approx(solo)
        model.observe_start(RunningBatch(1, "m0", 4, start=0.0))
        model.observe_start(RunningBatch(2, "m1", 2, start=0.001))
        guess = model.predict_one(RunningBatch(3, "m1", 2, 0.0), now=0.002)
        assert guess.mean == pytest.approx(solo * (1 + 0.5 * 2))
        done = model.observe_end(1, end=0.004)
        assert [(o.batch_id, o.start, o.end) for o in done.timeline] == [(2, 0.001, 0.004)]
        model.learn_one(done)
        assert model.predictor.learned == [done]
        with pytest.raises(ConfigError, match="only predlat's predictors"):
            model.save("never.json")
    finally:
        PREDICTORS.pop("half")


def test_event_errors_are_user_errors() -> None:
    model = LatencyModel(PROFILE, "coarse")
    with pytest.raises(ConfigError, match="never started"):
        model.observe_end(5, end=1.0)
    model.observe_start(RunningBatch(5, "m0", 1, start=1.0))
    with pytest.raises(ConfigError, match="already started"):
        model.observe_start(RunningBatch(5, "m0", 1, start=1.0))
    with pytest.raises(ConfigError, match="unknown predictor"):
        LatencyModel(PROFILE, "fine-x")
    with pytest.raises(ConfigError, match="taken"):
        register_predictor("fine", HalfPerCoRunner)
