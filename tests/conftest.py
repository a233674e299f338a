"""Shared fixtures. Every test session gets its own model/profile cache so tests never
read or write the user's cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from predlat.models.spec import ModelSpec
    from serving_fakes import FakeRuntime


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Also: profiles are cached whatever else loads the machine (what the tests check
    must not depend on it; tests of that rule set the limit themselves)."""
    path = tmp_path_factory.mktemp("predlat-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREDLAT_CACHE_DIR", str(path))
        mp.setenv("PREDLAT_FOREIGN_CPU_LIMIT", "1")
        yield


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    """The built-in tiny model, which the serving tests serve."""
    from predlat.models.registry import resolve_model

    return resolve_model("tiny")


@pytest.fixture
def runtime(spec: ModelSpec) -> Iterator[FakeRuntime]:
    """A fake runtime serving `spec` (a module may define its own)."""
    from serving_fakes import FakeRuntime

    fake = FakeRuntime([spec])
    yield fake
    fake.stop()


def build_matmul_model(path: Path, width: int = 256, depth: int = 8) -> Path:
    """A chain of `depth` dense layers: a few ms per batch on one thread, enough for two
    batches on two slots to overlap measurably."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"]))
        prev = f"a{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "matmul_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def matmul_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_matmul_model(tmp_path_factory.mktemp("models") / "matmul.onnx", width=512)
