"""Triton model repositories: `DIR/<model>/config.pbtxt` and `DIR/<model>/<version>/model.onnx`,
parsed with Triton's own model-config schema (the compiled protobuf tritonclient ships).

What takes effect (per model): `max_batch_size` (larger requests are refused; the
scheduler batches up to the largest), `dynamic_batching { priority_levels,
default_priority_level, default_queue_policy { timeout_action,
default_timeout_microseconds, allow_timeout_override, max_queue_size } }`, and
`instance_group { count }` (the execution slots are the sum of the counts). Fields predlat
cannot honour are refused by name (`sequence_batching`, `ensemble_scheduling`, a platform
other than ONNX Runtime); other fields set are warned about by name and ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from predlat.errors import ConfigError
from predlat.models.spec import ModelSpec, TensorSpec, load_model_spec

log = logging.getLogger(__name__)

CONFIG_NAME = "config.pbtxt"
MODEL_FILE = "model.onnx"
PLATFORMS = ("", "onnxruntime_onnx")
BACKENDS = ("", "onnxruntime")
REFUSED = ("sequence_batching", "ensemble_scheduling")
APPLIED = ("name", "platform", "backend", "max_batch_size", "input", "output",
           "dynamic_batching", "instance_group", "version_policy")  # fmt: skip
APPLIED_BATCHING = ("priority_levels", "default_priority_level", "default_queue_policy",
                    "preferred_batch_size", "max_queue_delay_microseconds")  # fmt: skip


@dataclass(frozen=True)
class ModelSettings:
    """A model's serving settings (0 means unbounded / not set)."""

    max_batch_size: int = 0
    priority_levels: int = 0
    default_priority_level: int = 0
    timeout_action: str = "REJECT"
    default_timeout_s: float | None = None
    allow_timeout_override: bool = True
    max_queue_size: int = 0
    instance_count: int = 1


@dataclass(frozen=True)
class RepositoryModel:
    name: str
    version: str
    path: Path  # the model.onnx of the version served
    settings: ModelSettings
    config: Any = field(default=None, compare=False, repr=False)  # its parsed config.pbtxt

    def spec(self) -> ModelSpec:
        """Its signature, named after its directory (every file is model.onnx), checked
        against the inputs and outputs its config declares."""
        spec = load_model_spec(self.path, name=self.name)
        self.check(spec)
        return spec

    def check(self, spec: ModelSpec) -> None:
        """Refuses a config whose declared inputs or outputs the model does not have (as
        Triton does): served, every request would be refused for it."""
        if self.config is None:
            return
        where = self.path.parent.parent / CONFIG_NAME
        batched = self.config.max_batch_size > 0
        for kind, declared, actual in (
            ("input", self.config.input, spec.inputs),
            ("output", self.config.output, spec.outputs),
        ):
            by_name = {t.name: t for t in actual}
            for entry in declared:
                tensor = by_name.get(entry.name)
                if tensor is None:
                    names = ", ".join(by_name)
                    raise ConfigError(
                        f"{where}: {kind} '{entry.name}' is not in the model ({kind}s: {names})"
                    )
                _check_tensor(entry, tensor, batched, f"{where}: {kind} '{entry.name}'")


def _check_tensor(entry: Any, tensor: TensorSpec, batched: bool, label: str) -> None:
    datatype = f"TYPE_{tensor.v2_datatype}"
    if entry.data_type and model_config_pb2.DataType.Name(entry.data_type) != datatype:
        declared = model_config_pb2.DataType.Name(entry.data_type)
        raise ConfigError(f"{label}: data_type {declared}, the model's is {datatype}")
    # Triton's dims leave out the batch axis when the model batches (max_batch_size > 0).
    shape = [-1 if d is None else d for d in tensor.shape]
    model_dims = shape[1:] if batched else shape
    dims = list(entry.dims)
    fits = len(dims) == len(model_dims) and all(
        a == b or -1 in (a, b) for a, b in zip(dims, model_dims, strict=True)
    )
    if dims and not fits:
        raise ConfigError(f"{label}: dims {dims} do not match the model's {model_dims}")


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """A config.pbtxt as Triton's ModelConfig, or a ConfigError naming the file, line and
    field that is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def settings_from_config(config: model_config_pb2.ModelConfig, where: Path) -> ModelSettings:
    """The settings a ModelConfig asks for; refuses what cannot be honoured, by name."""
    set_fields = {f.name for f, _ in config.ListFields()}
    for name in REFUSED:
        if name in set_fields:
            raise ConfigError(f"{where}: '{name}' is not supported by predlat")
    if config.platform not in PLATFORMS or config.backend not in BACKENDS:
        raise ConfigError(
            f"{where}: platform '{config.platform}' / backend '{config.backend}' is not "
            "supported (predlat serves ONNX models: onnxruntime_onnx)"
        )
    for name in sorted(set_fields - set(APPLIED)):
        log.warning("%s: field '%s' is ignored by predlat", where, name)
    batching = config.dynamic_batching
    for f, _ in batching.ListFields():
        if f.name not in APPLIED_BATCHING:
            log.warning("%s: field 'dynamic_batching.%s' is ignored by predlat", where, f.name)
    if batching.priority_queue_policy:
        log.warning("%s: field 'dynamic_batching.priority_queue_policy' is ignored", where)
    levels, default_level = batching.priority_levels, batching.default_priority_level
    if levels and not 1 <= default_level <= levels:
        raise ConfigError(
            f"{where}: 'dynamic_batching.default_priority_level' is {default_level}, it must "
            f"be in 1..priority_levels ({levels})"
        )
    if config.max_batch_size < 0:
        raise ConfigError(f"{where}: 'max_batch_size' must be >= 0, got {config.max_batch_size}")
    policy = batching.default_queue_policy
    action = model_config_pb2.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action)
    timeout_us = policy.default_timeout_microseconds
    has_policy = batching.HasField("default_queue_policy")
    counts = [g.count for g in config.instance_group] or [1]
    if any(c < 0 for c in counts):
        raise ConfigError(f"{where}: 'instance_group.count' must be >= 0")
    return ModelSettings(
        max_batch_size=config.max_batch_size,
        priority_levels=levels,
        default_priority_level=default_level,
        timeout_action=action,
        default_timeout_s=timeout_us / 1e6 if timeout_us else None,
        allow_timeout_override=policy.allow_timeout_override if has_policy else True,
        max_queue_size=policy.max_queue_size,
        instance_count=max(1, sum(c or 1 for c in counts)),
    )


def load_model(directory: Path) -> RepositoryModel:
    """One model directory: its config and its latest numbered version holding model.onnx."""
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise ConfigError(f"{directory}: no {CONFIG_NAME}")
    config = parse_config(config_path)
    if config.name and config.name != directory.name:
        raise ConfigError(
            f"{config_path}: 'name' is '{config.name}' but the directory is '{directory.name}'"
        )
    if config.version_policy.WhichOneof("policy_choice") not in (None, "latest"):
        log.warning("%s: field 'version_policy' is ignored: serving the latest", config_path)
    versions = sorted(
        (int(p.name), p) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()
    )
    found = [(v, p / MODEL_FILE) for v, p in versions if (p / MODEL_FILE).is_file()]
    if not found:
        raise ConfigError(f"{directory}: no <version>/{MODEL_FILE}")
    version, path = found[-1]
    settings = settings_from_config(config, config_path)
    return RepositoryModel(directory.name, str(version), path, settings, config)


def scan_repository(root: Path) -> list[RepositoryModel]:
    """Every model directory under `root`, sorted by name."""
    if not root.is_dir():
        raise ConfigError(f"model repository '{root}' is not a directory")
    models = [load_model(d) for d in sorted(root.iterdir()) if d.is_dir()]
    if not models:
        raise ConfigError(f"model repository '{root}' holds no model directories")
    return models
