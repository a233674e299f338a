"""Fitted predictors on disk: JSON, versioned, tied to the profile they were fitted with.

The file holds the predictor's whole state (weights, RLS covariance, calibration
residuals, forecast-mode state, histories) as plain JSON: numbers, strings, lists and
tagged containers; numpy arrays as nested lists with their dtype (floats round-trip
exactly). Objects are recorded by class and attributes and rebuilt without running any
constructor; only classes from predlat's own modules are accepted, so a file can carry
data, never code (unlike pickle). The profile itself is not stored: objects that refer
to it get the profile passed to `load_predictor`, which must be the one the predictor
was fitted with (same machine, model digests and solo measurements), since features
and weights are relative to it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from predlat import __version__
from predlat.errors import PredlatError
from predlat.predict.base import BasePredictor
from predlat.profiling.profile import Profile

FORMAT = "predlat-predictor"
# 2: the predictor family as small classes, ForecastPrior; 3: RLS prior; 4: the fine
# family's demand products (Design.interact)
FORMAT_VERSION = 4
_ALLOWED_PREFIX = "predlat."


class PredictorFileError(PredlatError):
    """A predictor file that is missing, unreadable, or for another profile."""


def profile_identity(profile: Profile) -> dict[str, Any]:
    """What a fitted predictor depends on: the machine as profiled, the model files,
    and a digest of every solo measurement and feature (features are normalised over
    all profiled models)."""
    machine = profile.to_json()["machine"]
    return {
        "machine": {k: machine[k] for k in ("cpu", "cores", "provider", "intra_op_threads")},
        "models": sorted(profile.models),
        "digests": dict(sorted(profile.digests.items())),
        "fingerprint": hashlib.sha256(
            json.dumps(profile.to_json(), sort_keys=True).encode()
        ).hexdigest(),
    }


def save_predictor(predictor: BasePredictor, profile: Profile, path: str | Path) -> Path:
    """Write `predictor` (fitted against `profile`) to `path` as JSON; returns the path."""
    path = Path(path)
    encoder = _Encoder(profile)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "predlat_version": __version__,
        "predictor": predictor.name,
        "profile": profile_identity(profile),
        "state": encoder.encode(predictor, "predictor"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, allow_nan=False))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_predictor(path: str | Path, profile: Profile) -> BasePredictor:
    """The predictor saved at `path`, bound to `profile` (which must match the one it was
    fitted with); it keeps learning online like a freshly fitted one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise PredictorFileError(f"cannot read predictor {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise PredictorFileError(f"{path} is not a predictor file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PredictorFileError(f"{path} is not a predlat predictor file")
    version = doc.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise PredictorFileError(f"{path}: format_version {version!r} is not an integer")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise PredictorFileError(
            f"{path} has predictor format {doc['format_version']}; this predlat reads up "
            f"to {FORMAT_VERSION} (upgrade predlat)"
        )
    if doc.get("format_version", 0) < FORMAT_VERSION:
        raise PredictorFileError(
            f"{path} has predictor format {doc.get('format_version')}, from an older predlat "
            f"whose predictor state this one cannot read: fit it again (predlat fit)"
        )
    if not isinstance(doc.get("profile", {}), dict) or "state" not in doc:
        raise PredictorFileError(f"{path}: a predictor file needs 'profile' and 'state'")
    _check_profile(path, doc.get("profile", {}), profile_identity(profile))
    try:
        predictor = _Decoder(profile).decode(doc["state"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        # An edited or truncated state: say so, not where the decoder tripped.
        detail = f"{type(exc).__name__}: {exc}"
        raise PredictorFileError(f"{path}: corrupt predictor state ({detail})") from None
    if not isinstance(predictor, BasePredictor):
        raise PredictorFileError(f"{path} does not hold a predictor")
    return predictor


def _check_profile(path: Path, saved: dict, current: dict) -> None:
    what = f"predictor {path} was fitted against another profile"
    if saved.get("machine") != current["machine"]:
        raise PredictorFileError(
            f"{what}: machine {saved.get('machine')}, this one {current['machine']}"
        )
    if saved.get("models") != current["models"]:
        raise PredictorFileError(
            f"{what}: models {', '.join(saved.get('models', []))}; this run profiles "
            f"{', '.join(current['models'])} (fit it on traces of the same models)"
        )
    changed = [m for m, d in saved.get("digests", {}).items() if current["digests"].get(m) != d]
    if changed:
        raise PredictorFileError(f"{what}: model files changed since: {', '.join(changed)}")
    if saved.get("fingerprint") != current["fingerprint"]:
        raise PredictorFileError(
            f"{what}: the solo profile was re-measured since (refit it with `predlat fit`)"
        )


class _Encoder:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.memo: dict[int, int] = {}
        self.keep: list[object] = []  # keeps encoded objects alive: ids stay unique

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, bool | str | int):
            return value
        if isinstance(value, float | np.floating):
            v = float(value)
            return v if math.isfinite(v) else {"t": "float", "v": repr(v)}
        if isinstance(value, np.integer):
            return int(value)
        if value is self.profile or isinstance(value, Profile):
            return {"t": "profile"}
        if isinstance(value, tuple):
            items = [self.encode(v, f"{where}[]") for v in value]
            if hasattr(value, "_fields"):  # a NamedTuple: its class too (a predlat one)
                return {"t": "ntuple", "cls": self._class(value, where), "v": items}
            return {"t": "tuple", "v": items}
        if id(value) in self.memo:
            return {"t": "ref", "id": self.memo[id(value)]}
        ref = self.memo[id(value)] = len(self.memo)
        self.keep.append(value)
        if isinstance(value, np.ndarray):
            return {
                "t": "nd",
                "id": ref,
                "dtype": str(value.dtype),
                "shape": list(value.shape),
                "v": [self.encode(v, where) for v in value.ravel().tolist()],
            }
        if isinstance(value, list):
            return {"t": "list", "id": ref, "v": [self.encode(v, f"{where}[]") for v in value]}
        if isinstance(value, set):
            return {"t": "set", "id": ref, "v": [self.encode(v, f"{where}{{}}") for v in value]}
        if isinstance(value, deque):
            return {
                "t": "deque",
                "id": ref,
                "maxlen": value.maxlen,
                "v": [self.encode(v, f"{where}[]") for v in value],
            }
        if isinstance(value, dict):
            return {
                "t": "dict",
                "id": ref,
                "v": [
                    [self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                    for k, v in value.items()
                ],
            }
        return {
            "t": "obj",
            "id": ref,
            "cls": self._class(value, where),
            "v": {k: self.encode(v, f"{where}.{k}") for k, v in _attributes(value).items()},
        }

    @staticmethod
    def _class(value: object, where: str) -> str:
        cls = type(value)
        if not cls.__module__.startswith(_ALLOWED_PREFIX):
            raise PredlatError(
                f"cannot save {where}: a {cls.__module__}.{cls.__qualname__} is not predictor state"
            )
        return f"{cls.__module__}:{cls.__qualname__}"


def _attributes(obj: object) -> dict[str, Any]:
    attrs = dict(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        for name in getattr(klass, "__slots__", ()):
            if hasattr(obj, name):
                attrs[name] = getattr(obj, name)
    return attrs


class _Decoder:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.memo: dict[int, Any] = {}

    def decode(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        tag = node.get("t")
        if tag == "float":
            return float(node["v"])
        if tag == "profile":
            return self.profile
        if tag == "tuple":
            return tuple(self.decode(v) for v in node["v"])
        if tag == "ntuple":
            return _class_named(node["cls"])(*(self.decode(v) for v in node["v"]))
        if tag == "ref":
            return self.memo[node["id"]]
        if tag == "nd":
            arr = np.array([self.decode(v) for v in node["v"]], dtype=node["dtype"])
            out = self.memo[node["id"]] = arr.reshape(node["shape"])
            return out
        if tag == "list":
            out = self.memo[node["id"]] = []
            out.extend(self.decode(v) for v in node["v"])
            return out
        if tag == "set":
            out = self.memo[node["id"]] = set()
            out.update(self.decode(v) for v in node["v"])
            return out
        if tag == "deque":
            out = self.memo[node["id"]] = deque(maxlen=node["maxlen"])
            out.extend(self.decode(v) for v in node["v"])
            return out
        if tag == "dict":
            out = self.memo[node["id"]] = {}
            for k, v in node["v"]:
                out[self.decode(k)] = self.decode(v)
            return out
        if tag == "obj":
            obj = _new(node["cls"])
            self.memo[node["id"]] = obj
            for k, v in node["v"].items():
                object.__setattr__(obj, k, self.decode(v))
            return obj
        raise PredictorFileError(f"unknown entry {tag!r} in a predictor file")


def _new(qualified: str) -> object:
    """An instance of a predlat class, without running its constructor."""
    cls = _class_named(qualified)
    return cls.__new__(cls)


def _class_named(qualified: str) -> type:
    """The predlat class a file names ("module:qualname")."""
    module, _, name = qualified.partition(":")
    if not module.startswith(_ALLOWED_PREFIX):
        raise PredictorFileError(f"predictor file names a foreign class {qualified!r}")
    try:
        cls = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        raise PredictorFileError(
            f"predictor file names {qualified!r}, which this predlat lacks"
        ) from None
    if not isinstance(cls, type):
        raise PredictorFileError(f"predictor file names {qualified!r}, not a class")
    return cls
