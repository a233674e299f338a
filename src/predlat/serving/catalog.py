"""The models a server answers for, and Triton's repository extension over them: index,
load and unload at runtime.

Every model is built into the runtime (profiled, loaded on the device) when the server
starts; unload only stops new requests for it (those in flight finish), and load
re-reads its config.pbtxt from the repository (new settings take effect) and takes
requests again. Requests for other models are never touched.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

from predlat.errors import ConfigError
from predlat.models.spec import ModelSpec
from predlat.serving import protocol
from predlat.serving.protocol import ProtocolError
from predlat.serving.repository import ModelSettings, load_model


class Catalog:
    def __init__(
        self,
        specs: Sequence[ModelSpec],
        settings: MutableMapping[str, ModelSettings],
        repository: Path | None = None,
        versions: dict[str, str] | None = None,
    ) -> None:
        self.specs = {s.name: s for s in specs}
        self.settings = settings  # shared with the ServerConfig: load updates it
        self.repository = repository
        self.versions = versions or {}
        self.unloaded: set[str] = set()
        self._lock = threading.Lock()  # HTTP and gRPC threads

    def version(self, name: str) -> str:
        return self.versions.get(name, protocol.MODEL_VERSION)

    def get(self, name: str, version: str | None = None) -> ModelSpec:
        """The model a request names, or a 404 ProtocolError."""
        spec = self.specs.get(name)
        if spec is None:
            served = ", ".join(n for n in self.specs if n not in self.unloaded) or "none"
            raise ProtocolError(f"unknown model '{name}' (served: {served})", 404)
        if name in self.unloaded:
            raise ProtocolError(f"model '{name}' is unloaded (load it: repository API)", 404)
        if version not in (None, "", self.version(name)):
            raise ProtocolError(
                f"model '{name}' has no version '{version}' (versions: {self.version(name)})", 404
            )
        return spec

    def index(self, ready: bool) -> list[dict[str, str]]:
        out = []
        for name in self.specs:
            entry = {"name": name, "version": self.version(name)}
            if name in self.unloaded:
                entry |= {"state": "UNAVAILABLE", "reason": "unloaded"}
            else:
                entry["state"] = "READY" if ready else "UNAVAILABLE"
            out.append(entry)
        return out

    def load(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        if parameters:  # Triton's overrides ("config", "file:..."): never silently dropped
            raise ProtocolError(
                f"load parameters ({', '.join(sorted(parameters))}) are not supported: edit "
                "the model's config.pbtxt in the repository, then load it",
                400,
            )
        if name not in self.specs:
            raise ProtocolError(
                f"model '{name}' was not in the repository when the server started; "
                "restart the server to serve it",
                400,
            )
        if self.repository is not None:
            try:
                model = load_model(self.repository / name)
                model.check(self.specs[name])
            except ConfigError as exc:
                raise ProtocolError(f"cannot load model '{name}': {exc}", 400) from None
            if model.path.resolve() != self.specs[name].path.resolve():
                raise ProtocolError(
                    f"model '{name}': a new version ({model.version}) needs a server restart",
                    400,
                )
            self.settings[name] = model.settings
        with self._lock:
            self.unloaded.discard(name)

    def unload(self, name: str) -> None:
        self.get(name)
        with self._lock:
            self.unloaded.add(name)


def load_parameters(body: bytes) -> dict[str, object]:
    """The `parameters` of an HTTP repository load body (empty: none), or a 400."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except ValueError:
        raise ProtocolError("malformed JSON in the load request body", 400) from None
    params = doc.get("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise ProtocolError("a load request body must be a JSON object of 'parameters'", 400)
    return params
