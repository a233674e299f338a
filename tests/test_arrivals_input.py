"""Malformed arrival files (simulate's CSV and Azure traces, load's replay): one clear
error naming the file, line and field, never a traceback or a run that never ends."""

from __future__ import annotations

import pytest

from predlat.errors import ConfigError
from predlat.sim.arrivals import csv_requests
from predlat.workload.arrivals import replay_workload


def _csv(tmp_path, text: str):
    path = tmp_path / "a.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("timestamp,model\nnan,small\n", "a.csv:2: timestamp 'nan'"),
        ("timestamp,model\ninf,small\n", "a.csv:2: timestamp 'inf'"),
        ("timestamp,model\n0\n", "a.csv:2: the row has no model"),
        ("timestamp,model,deadline_ms\n0,small,-5\n", "a.csv:2: deadline_ms '-5'"),
        ("timestamp,model,deadline_ms\n0,small,nan\n", "a.csv:2: deadline_ms 'nan'"),
        ("timestamp,model,deadline_ms\n0,small,x\n", "a.csv:2: deadline_ms 'x'"),
        ("timestamp,model\n", "no requests"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,x,2\n", "a.csv:2: minute 1"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,-1,2\n", "a.csv:2: minute 1"),
        ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,0,0\n", "no requests"),
    ],
)
def test_bad_simulate_arrivals_name_the_problem(tmp_path, text, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        csv_requests(_csv(tmp_path, text), ["small"], lambda m: 0.1)


def test_simulate_arrivals_that_are_not_text(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not a text CSV"):
        csv_requests(path, ["small"], lambda m: 0.1)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("time,model\nabc,tiny\n", "row 1: time 'abc'"),
        ("time,model\n0,tiny\nnan,tiny\n", "row 2: time 'nan'"),
        ("time,model\ninf,tiny\n", "row 1: time 'inf'"),
        ("time,model\n0\n", "row 1: no model"),
        ("time,model,high_priority\n0,tiny,maybe\n", "row 1: high_priority 'maybe'"),
        ("time,model\n", "holds no arrivals"),
    ],
)
def test_bad_replay_files_name_the_problem(tmp_path, text, named):
    with pytest.raises(ConfigError, match=named):
        replay_workload(_csv(tmp_path, text))


def test_replay_reads_priorities_and_missing_ones(tmp_path):
    text = "time,model,high_priority\n1.5,tiny,true\n1.0,tiny\n2,tiny,0\n"
    arrivals = replay_workload(_csv(tmp_path, text))
    assert [(a.time, a.high_priority) for a in arrivals] == [
        (1.0, False),
        (1.5, True),
        (2.0, False),
    ]
