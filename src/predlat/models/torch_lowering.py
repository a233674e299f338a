"""ONNX graphs as torch modules: predlat's own lowering, for the zoo and a user's files.

Why our own lowering and not onnx2torch: onnx2torch imports torchvision, and the
registry's torchvision does not import beside the CPU torch build that CI installs
(`operator torchvision::nms does not exist`), so CI could not run it. And onnx2torch runs
shape arithmetic (Shape -> Gather -> Concat -> Reshape) as device tensors, so a forward
pass reads device values back to the host 52-186 times (yolo, roberta, vit), which breaks
CUDA graph capture. Here every value is either a *device* tensor (derived from the
inputs' data) or a *host* numpy array (derived from constants and tensor shapes only).
Host values are computed with Python ints from `x.shape`, once per input-shape signature,
and cached; a host value that feeds a device op is copied to the device once and cached
too. A forward pass therefore never reads a device value on the host, and after one
warm-up call per batch size it issues no host-to-device copy either, so it can be
captured in a CUDA graph. An op that would need a device value as a shape (a
data-dependent shape) is refused when the model is lowered.

Initializers that device ops read become buffers (they move with `.to(device)`); those
read as shapes or axes stay on the host. Constant subgraphs are folded at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from predlat.errors import ModelLoadError
from predlat.models import torch_ops_nn  # noqa: F401  (registers the layer ops)
from predlat.models.torch_ops import OPS, Node, OpDef


@dataclass(frozen=True)
class _Step:
    node: Node
    op: OpDef
    host: bool  # computed on the host, once per input-shape signature


@dataclass
class _Signature:
    """What one input-shape signature fixes: host values and their device copies."""

    host: dict[str, np.ndarray] = field(default_factory=dict)
    on_device: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)


class LoweredOnnx(torch.nn.Module):
    """An ONNX graph run op by op in torch: forward(*inputs) -> tuple of outputs."""

    def __init__(self, proto: onnx.ModelProto, path: Path) -> None:
        super().__init__()
        self.path = path
        graph = proto.graph
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        _check_supported(graph, path)
        consts = {t.name: np.array(numpy_helper.to_array(t)) for t in graph.initializer}
        self.input_names = tuple(i.name for i in graph.input if i.name not in consts)
        self.output_names = tuple(o.name for o in graph.output)
        nodes = [Node.of(n, opset) for n in graph.node]
        nodes = self._fold_constants(nodes, consts)
        self._steps = self._plan(nodes, set(consts))
        self._host_consts: dict[str, np.ndarray] = {}
        self._buffer_of: dict[str, str] = {}
        self._keep_constants(consts)
        self._signatures: dict[tuple[tuple[int, ...], ...], _Signature] = {}

    # -- building --------------------------------------------------------------------
    def _fold_constants(self, nodes: list[Node], consts: dict[str, np.ndarray]) -> list[Node]:
        """Evaluate nodes that read only constants now; return the others."""
        kept = []
        for node in nodes:
            if all(not i or i in consts for i in node.inputs):
                op = OPS[node.op_type]
                args = [_host_input(op, p, consts.get(n)) for p, n in enumerate(node.inputs)]
                outs = self._call(node, op, args)
                consts.update(zip(node.outputs, (_to_host(o) for o in outs), strict=False))
            else:
                kept.append(node)
        return kept

    def _plan(self, nodes: list[Node], host: set[str]) -> list[_Step]:
        """Mark each node host or device, refusing data-dependent shapes."""
        steps = []
        for node in nodes:
            op = OPS[node.op_type]
            for pos in op.static:
                name = node.inputs[pos] if pos < len(node.inputs) else ""
                if name and name not in host:
                    raise ModelLoadError(
                        self.path,
                        f"{node.op_type} node '{node.name}' takes input {pos} ('{name}') from "
                        "the input data (a data-dependent shape); the torch lowering needs "
                        "shapes known from tensor shapes and constants",
                    )
            reads = op.static | op.shape_only
            is_host = all(n in host for p, n in enumerate(node.inputs) if n and p not in reads)
            if is_host:
                host.update(node.outputs)
            steps.append(_Step(node, op, is_host))
        return steps

    def _keep_constants(self, consts: dict[str, np.ndarray]) -> None:
        """Constants device ops read become buffers; those host steps or shape inputs read
        stay numpy arrays (a constant can be both)."""
        on_device: set[str] = set(n for n in self.output_names if n in consts)
        for step in self._steps:
            for pos, name in enumerate(step.node.inputs):
                if name not in consts:
                    continue
                data = pos not in step.op.static | step.op.shape_only
                if data and not step.host:
                    on_device.add(name)
                if not data or step.host:
                    self._host_consts[name] = consts[name]
        for index, name in enumerate(sorted(on_device)):
            attr = f"const_{index}"
            self.register_buffer(attr, torch.from_numpy(consts[name]))
            self._buffer_of[name] = attr

    # -- running ---------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise TypeError(f"{self.path.name} takes inputs {self.input_names}")
        key = tuple(tuple(x.shape) for x in inputs)
        known = self._signatures.get(key)
        sig = known or _Signature()
        env: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
        env.update(sig.host)
        device = inputs[0].device
        for step in self._steps:
            if step.host:
                if known is None:
                    self._run_on_host(step, env, sig)
                continue
            args = [self._arg(step, p, n, env, sig, device) for p, n in enumerate(step.node.inputs)]
            env.update(zip(step.node.outputs, self._call(step.node, step.op, args), strict=False))
        if known is None:  # published whole: a concurrent caller never sees half of it
            self._signatures.setdefault(key, sig)
        return tuple(self._device_value(n, env, sig, device) for n in self.output_names)

    def _run_on_host(self, step: _Step, env: dict[str, Any], sig: _Signature) -> None:
        args = [self._arg(step, p, n, env, None, None) for p, n in enumerate(step.node.inputs)]
        outs = [_to_host(o) for o in self._call(step.node, step.op, args)]
        for name, value in zip(step.node.outputs, outs, strict=False):
            env[name] = sig.host[name] = value

    def _arg(
        self,
        step: _Step,
        pos: int,
        name: str,
        env: dict[str, Any],
        sig: _Signature | None,
        device: torch.device | None,
    ) -> Any:
        """Input `pos` of a step: a host array for static inputs, else a tensor (a CPU
        tensor for host steps, a device tensor for device steps)."""
        if not name:
            return None
        if sig is None or pos in step.op.static | step.op.shape_only:
            value = env[name] if name in env else self._host_consts[name]
            return _host_input(step.op, pos, value)
        return self._device_value(name, env, sig, device)

    def _device_value(
        self, name: str, env: dict[str, Any], sig: _Signature, device: torch.device | None
    ) -> torch.Tensor:
        value = env.get(name)
        if isinstance(value, torch.Tensor):
            return value
        if value is None:
            return getattr(self, self._buffer_of[name])
        key = (name, str(device))
        tensor = sig.on_device.get(key)
        if tensor is None:  # first call of this signature: one copy, then reused
            tensor = sig.on_device[key] = torch.from_numpy(np.array(value)).to(device)
        return tensor

    def _call(self, node: Node, op: OpDef, args: list[Any]) -> list[Any]:
        try:
            out = op.fn(node, args)
        except NotImplementedError as exc:
            raise ModelLoadError(
                self.path, f"{node.op_type} node '{node.name}' is not supported: {exc}"
            ) from None
        return list(out) if isinstance(out, (list, tuple)) else [out]


def _host_input(op: OpDef, pos: int, value: Any) -> Any:
    """A host value as an op reads it: numpy for static and shape-only inputs, a CPU
    tensor for data inputs (a device tensor read for its shape passes through)."""
    if value is None or pos in op.static | op.shape_only or isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.array(value))


def _to_host(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().numpy()  # a CPU tensor from a host step, never a device one
    return np.asarray(value)


def _check_supported(graph: onnx.GraphProto, path: Path) -> None:
    missing = sorted(
        {
            n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            for n in graph.node
            if n.domain not in ("", "ai.onnx") or n.op_type not in OPS
        }
    )
    if missing:
        raise ModelLoadError(
            path,
            f"the torch lowering does not support ONNX op(s) {', '.join(missing)}; "
            "run it on an ONNX Runtime device instead",
        )


def lower_onnx(path: str | Path) -> LoweredOnnx:
    """The ONNX file at `path` as an eval-mode torch module on the CPU."""
    path = Path(path)
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ModelLoadError(path, f"not an ONNX model ({type(exc).__name__})") from None
    return LoweredOnnx(proto, path).eval()
