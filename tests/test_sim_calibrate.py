"""Calibration recovers a known law from traces the simulator wrote; device.json checks."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from predlat.cli import main
from predlat.sim.calibrate import calibrate
from predlat.sim.device_file import (
    DeviceFileError,
    load_device,
    parse_device,
    save_device,
)
from predlat.sim.replay import random_colocation
from predlat.traces.trace_file import write_trace

TRUE_PAIRS = {("small", "small"): 0.15, ("large", "medium"): 0.4, ("medium", "large"): 0.25}


def _known(cores: int | None = 2):
    spec = load_device("cpu4")
    law = replace(
        spec.law,
        pairs=TRUE_PAIRS,
        cores=cores,
        noise_sigma=0.02,
        noise_per_corunner=0.01,
        base=0.05,
        compute=0.0,
        memory=0.0,
    )
    return replace(spec, law=law)


@pytest.mark.parametrize("cores", [2, None])
def test_calibration_recovers_known_law(cores):
    spec = _known(cores)
    records = random_colocation(spec, 4, 1200, seed=1, gap_s=0.05)
    cal = calibrate(records, spec.profile(cv=0.0))
    law = cal.spec.law
    assert law.cores == cores
    for pair, truth in TRUE_PAIRS.items():
        assert law.pairs[pair] == pytest.approx(truth, abs=0.04)
    others = [v for k, v in law.pairs.items() if k not in TRUE_PAIRS]
    assert all(v == pytest.approx(0.05, abs=0.03) for v in others)
    assert law.noise_sigma == pytest.approx(0.02, abs=0.01)
    assert law.noise_per_corunner == pytest.approx(0.01, abs=0.006)
    assert all(abs(p.mean_err) < 0.02 for p in cal.pairs)
    assert all(v == pytest.approx(1.0, abs=0.04) for v in cal.solo_scale.values())


def test_calibration_fits_a_slower_machine_as_solo_scale():
    spec = _known(None)
    slow = replace(
        spec,
        models={
            m: replace(c, solo_s={n: 1.5 * v for n, v in c.solo_s.items()})
            for m, c in spec.models.items()
        },
    )
    records = random_colocation(slow, 3, 800, seed=4, gap_s=0.05)
    cal = calibrate(records, spec.profile(cv=0.0))
    assert all(v == pytest.approx(1.5, rel=0.03) for v in cal.solo_scale.values())
    assert cal.spec.law.pairs[("large", "medium")] == pytest.approx(0.4, abs=0.04)


def test_device_json_roundtrip(tmp_path):
    spec = _known()
    path = save_device(spec, tmp_path / "d.json")
    back = load_device(path)
    assert back.law.pairs == spec.law.pairs
    assert back.law.cores == 2
    assert back.models == spec.models


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.update(format="x"), "format"),
        (lambda d: d.update(cores=0), "cores"),
        (lambda d: d["noise"].update(sigma=-1), "noise.sigma"),
        (lambda d: d["models"]["small"]["solo_s"].update({"x": 1}), "models.small.solo_s"),
        (lambda d: d["models"]["small"].update(compute=2), "models.small.compute"),
        (lambda d: d["pairs"].update(nope={"small": 0.1}), "pairs.nope"),
        (lambda d: d["pairs"]["small"].update(small="a"), "pairs.small.small"),
        (lambda d: d.update(models={}), "models"),
        (lambda d: d.update(slots=0), "slots"),
        (lambda d: d["models"]["small"]["solo_s"].update({"1": math.nan}), "models.small.solo_s.1"),
        (lambda d: d["noise"].update(sigma=math.inf), "noise.sigma"),
        (lambda d: d["pairs"]["small"].update(small=math.nan), "pairs.small.small"),
        (lambda d: d.update(failure_rate=math.nan), "failure_rate"),
    ],
)
def test_device_json_errors_name_the_field(edit, field):
    data = _known().to_json()
    edit(data)
    with pytest.raises(DeviceFileError, match=field.replace(".", r"\.")):
        parse_device(data)


def test_unknown_device_names_presets():
    with pytest.raises(DeviceFileError, match="presets"):
        load_device("no-such-device")


def test_calibrate_cli(tmp_path, capsys):
    spec = _known()
    records = random_colocation(spec, 3, 400, seed=2, gap_s=0.02)
    write_trace(tmp_path / "t.parquet", records, {"concurrency": 3})
    spec.profile(cv=0.0).save(tmp_path / "profile.json")
    out = tmp_path / "dev.json"
    assert main(["calibrate", "--traces", str(tmp_path / "t.parquet"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Pair slowdowns" in text and "sim p99 ms" in text
    assert json.loads(out.read_text())["cores"] == 2
    assert load_device(out).law.pairs[("small", "small")] == pytest.approx(0.15, abs=0.05)


def test_calibrate_cli_refuses_a_folder_as_out_before_fitting(tmp_path, capsys):
    spec = _known()
    write_trace(tmp_path / "t.parquet", random_colocation(spec, 3, 50, seed=2), {"concurrency": 3})
    spec.profile(cv=0.0).save(tmp_path / "profile.json")
    (tmp_path / "out").mkdir()
    argv = ["calibrate", "--traces", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "is a folder" in capsys.readouterr().err
