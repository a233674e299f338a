"""`predlat serve` flags and the server's start-up checks (no runtime is built here)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from predlat.cli import main
from predlat.cli.serve import deadline_spec
from predlat.errors import ConfigError
from predlat.models.spec import ModelSpec, TensorSpec
from predlat.profiling.profile import BatchProfile, LatencyStats, MachineInfo, Profile
from predlat.scheduling.reasons import RejectReason
from predlat.scheduling.request import Priority
from predlat.serving.answers import priority_from_level, rejection_status
from predlat.serving.server import bind_socket, default_deadlines


def spec(name: str) -> ModelSpec:
    tensor = TensorSpec("x", np.dtype(np.float32), (None, 4))
    return ModelSpec(name, Path(f"{name}.onnx"), (tensor,), (tensor,), "0")


def profile(solo_s: dict[str, float]) -> Profile:
    machine = MachineInfo("cpu", 2, 1, "test", {})
    models = {m: {1: BatchProfile(LatencyStats(s, s, 0.0), {})} for m, s in solo_s.items()}
    return Profile(machine, models)


def test_deadline_spec_forms():
    assert deadline_spec("50") == (0.05, {})
    assert deadline_spec("tiny=20, resnet=200") == (None, {"tiny": 0.02, "resnet": 0.2})
    assert deadline_spec("100,tiny=20") == (0.1, {"tiny": 0.02})
    for bad in ("", "x", "tiny=0", "tiny=-5", "tiny=fast"):
        with pytest.raises(argparse.ArgumentTypeError):
            deadline_spec(bad)


def test_default_deadlines_given_shared_or_from_the_profile():
    prof = profile({"fast": 0.001, "slow": 0.02})
    specs = [spec("fast"), spec("slow")]
    assert default_deadlines(prof, specs) == {"fast": 0.05, "slow": pytest.approx(0.2)}
    assert default_deadlines(prof, specs, {"fast": 0.01}, 0.3) == {"fast": 0.01, "slow": 0.3}
    with pytest.raises(ConfigError, match="not served: other"):
        default_deadlines(prof, specs, {"other": 0.01})


def test_priority_and_rejection_mappings():
    assert priority_from_level(1) == Priority.HIGH
    assert [priority_from_level(level) for level in (0, 2, 7)] == [Priority.LOW] * 3

    def rejected(kind):
        return SimpleNamespace(rejected_for=kind)

    assert rejection_status(rejected(RejectReason.QUEUE_FULL)) == 429
    assert rejection_status(rejected(RejectReason.DEADLINE)) == 503
    assert rejection_status(rejected(RejectReason.SHUTTING_DOWN)) == 503
    assert rejection_status(rejected(None)) == 503


def test_bind_socket_reports_a_taken_port():
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind_socket("127.0.0.1", port)
        assert taken.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        taken.close()


def test_serve_command_user_errors_are_one_line(capsys):
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        assert main(["serve", "--models", "tiny", "--port", port, "--no-progress"]) == 2
        assert "cannot listen" in capsys.readouterr().err
    finally:
        taken.close()
    assert main(["serve", "--models", "nosuchmodel", "--no-progress"]) == 2
    assert "unknown model 'nosuchmodel'" in capsys.readouterr().err
    assert main(["serve", "--slots", "0"]) == 2
    assert "--slots" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--default-deadline-ms", "tiny=-1"])


def test_serve_door_grpc_and_repository_user_errors(capsys, tmp_path):
    assert main(["serve", "--max-inflight", "-1"]) == 2
    assert "--max-inflight" in capsys.readouterr().err
    assert main(["serve", "--decode-processes", "-2"]) == 2
    assert "--decode-processes" in capsys.readouterr().err
    for port in ("70000", "-2"):
        assert main(["serve", "--models", "tiny", "--grpc-port", port]) == 2
        assert "--grpc-port must be in 0..65535 or -1" in capsys.readouterr().err
    repo = tmp_path / "repo"
    assert main(["serve", "--models", "tiny", "--model-repository", str(repo)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["serve", "--model-repository", str(repo), "--no-progress"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text("max_batch_size: -3")
    (repo / "m" / "1" / "model.onnx").write_bytes(b"")
    assert main(["serve", "--model-repository", str(repo), "--no-progress"]) == 2
    assert "'max_batch_size' must be >= 0" in capsys.readouterr().err
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        code = main(["serve", "--models", "tiny", "--port", "0", "--grpc-port", port,
                     "--no-progress"])  # fmt: skip
        assert code == 2 and "cannot listen" in capsys.readouterr().err
    finally:
        taken.close()
