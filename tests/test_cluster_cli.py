"""`predlat serve --ray` flags: checked before any Ray instance starts, and a clear error
where Ray is not installed."""

from __future__ import annotations

import builtins

import pytest

from predlat.cli import main


def test_help_lists_the_ray_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--ray", "--address", "--replicas"):
        assert flag in out


def test_without_ray_installed_the_error_says_how_to_get_it(monkeypatch, capsys) -> None:
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["serve", "--ray", "--models", "tiny", "--port", "0"]) == 2
    assert "pip install 'predlat[ray]'" in capsys.readouterr().err


def test_bad_replica_count_is_refused_before_ray_starts(capsys) -> None:
    pytest.importorskip("ray")
    assert main(["serve", "--ray", "--replicas", "0", "--models", "tiny", "--port", "0"]) == 2
    assert "--replicas must be at least 1" in capsys.readouterr().err
