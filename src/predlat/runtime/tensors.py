"""Request tensors: checked against the model's graph on arrival, stacked into one batch
for the device, and the batch's outputs split back into each request's rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from predlat.errors import PredlatError
from predlat.models.spec import ModelSpec


class InvalidInputError(PredlatError):
    """A request that cannot be queued: inputs that do not match the model (names,
    dtypes, shapes) or a deadline that is not a number."""


def request_rows(
    model: str, inputs: dict[str, np.ndarray] | None, spec: ModelSpec | None = None
) -> int:
    """The rows a request brings (its inputs' shared first axis; 1 without inputs),
    after checking the inputs against `spec` when given."""
    if inputs is None:
        return 1
    if not inputs:
        raise InvalidInputError(f"request for '{model}' has no inputs")
    rows = {name: np.shape(a)[0] if np.ndim(a) else None for name, a in inputs.items()}
    if None in rows.values() or len(set(rows.values())) != 1:
        raise InvalidInputError(
            f"inputs for '{model}' must share a first (batch) axis, got "
            + ", ".join(f"{k}: {np.shape(v)}" for k, v in inputs.items())
        )
    if spec is not None:
        check_against_spec(spec, inputs)
    n = next(iter(rows.values()))
    if n < 1:
        raise InvalidInputError(f"inputs for '{model}' have no rows")
    return int(n)


def check_against_spec(spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> None:
    expected = {t.name: t for t in spec.inputs}
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        raise InvalidInputError(
            f"inputs for '{spec.name}': "
            + "; ".join(
                filter(
                    None,
                    (
                        missing and f"missing {', '.join(missing)}",
                        extra and f"unknown {', '.join(extra)}",
                    ),
                )
            )
        )
    for name, t in expected.items():
        a = inputs[name]
        if a.dtype != t.dtype:
            raise InvalidInputError(
                f"input '{name}' of '{spec.name}' must be {t.dtype}, got {a.dtype}"
            )
        if len(a.shape) != len(t.shape) or any(
            d is not None and d != s for d, s in zip(t.shape[1:], a.shape[1:], strict=True)
        ):
            want = ", ".join("N" if d is None else str(d) for d in t.shape)
            raise InvalidInputError(
                f"input '{name}' of '{spec.name}' must have shape [{want}], got {list(a.shape)}"
            )


def stack_inputs(
    parts: Sequence[tuple[dict[str, np.ndarray] | None, int]],
) -> dict[str, np.ndarray] | None:
    """Requests' inputs ((inputs, rows) each) stacked along axis 0; requests without
    inputs get zero rows shaped like the others'; None if no request brought inputs (the
    device feeds its own)."""
    given = [inputs for inputs, _ in parts if inputs is not None]
    if not given:
        return None
    if len(parts) == 1:
        return parts[0][0]
    out: dict[str, np.ndarray] = {}
    for name, sample in given[0].items():
        chunks = []
        for inputs, rows in parts:
            if inputs is not None:
                chunks.append(inputs[name])
            else:
                chunks.append(np.zeros((rows, *sample.shape[1:]), sample.dtype))
        out[name] = np.concatenate(chunks, axis=0)
    return out


def split_outputs(outputs: dict[str, np.ndarray] | None, rows: list[int]) -> list:
    """Each request's rows of the batch outputs (outputs without a batch axis are shared)."""
    if outputs is None:
        return [None] * len(rows)
    total = sum(rows)
    per: list[dict[str, np.ndarray]] = [{} for _ in rows]
    for name, value in outputs.items():
        batched = np.ndim(value) > 0 and np.shape(value)[0] == total
        offset = 0
        for i, n in enumerate(rows):
            per[i][name] = value[offset : offset + n] if batched else value
            offset += n
    return per
