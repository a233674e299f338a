"""Trace files: finished batches with their timelines, as Parquet.

One row per finished batch (`batch_id, model, batch_size, slot, device, dispatch, start,
end, latency`, seconds) and its `timeline`, a list of structs (`batch_id, model,
batch_size, start, end`) of the co-runners that overlapped it; where the device measured
them, the batch's phases (`copy_in_s, compute_s, copy_out_s`, optional columns, null for
batches without). File-level facts (models,
concurrency, load, seed, machine, predlat version) are JSON in the schema metadata under
the key `predlat`, so any Parquet tool reads the rows and predlat reads both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from predlat import __version__
from predlat.devices.base import PHASES
from predlat.errors import PredlatError
from predlat.traces.records import BatchRecord, Overlap

TRACE_FORMAT = "predlat-trace"
TRACE_FORMAT_VERSION = 1
_META_KEY = b"predlat"

OVERLAP_TYPE = pa.struct(
    [
        ("batch_id", pa.int64()),
        ("model", pa.string()),
        ("batch_size", pa.int32()),
        ("start", pa.float64()),
        ("end", pa.float64()),
    ]
)

TRACE_SCHEMA = pa.schema(
    [
        ("batch_id", pa.int64()),
        ("model", pa.string()),
        ("batch_size", pa.int32()),
        ("slot", pa.int32()),
        ("device", pa.int32()),
        ("dispatch", pa.float64()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("latency", pa.float64()),
        ("timeline", pa.list_(OVERLAP_TYPE)),
    ]
)
PHASE_SCHEMA = pa.schema([(name, pa.float64()) for name in PHASES])  # optional columns


@dataclass
class Trace:
    """A trace file's rows (in file order) and its metadata."""

    records: list[BatchRecord]
    metadata: dict[str, Any] = field(default_factory=dict)


class TraceFileError(PredlatError):
    """A file that is missing, unreadable, or not a predlat trace."""


def records_to_table(
    records: Sequence[BatchRecord], metadata: Mapping[str, Any] | None = None
) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in TRACE_SCHEMA.names}
    for r in records:
        columns["batch_id"].append(r.batch_id)
        columns["model"].append(r.model)
        columns["batch_size"].append(r.batch_size)
        columns["slot"].append(r.slot)
        columns["device"].append(r.device)
        columns["dispatch"].append(r.dispatch)
        columns["start"].append(r.start)
        columns["end"].append(r.end)
        columns["latency"].append(r.latency)
        columns["timeline"].append(
            [
                {
                    "batch_id": o.batch_id,
                    "model": o.model,
                    "batch_size": o.batch_size,
                    "start": o.start,
                    "end": o.end,
                }
                for o in r.timeline
            ]
        )
    schema = TRACE_SCHEMA
    if any(r.phases is not None for r in records):
        for i, name in enumerate(PHASES):
            columns[name] = [None if r.phases is None else r.phases[i] for r in records]
        schema = pa.schema([*TRACE_SCHEMA, *PHASE_SCHEMA])
    meta = {
        "format": TRACE_FORMAT,
        "format_version": TRACE_FORMAT_VERSION,
        "predlat_version": __version__,
        **dict(metadata or {}),
    }
    schema = schema.with_metadata({_META_KEY: json.dumps(meta).encode()})
    return pa.Table.from_pydict(columns, schema=schema)


def table_to_records(table: pa.Table) -> list[BatchRecord]:
    data = table.to_pydict()
    phases = [data[name] for name in PHASES] if PHASES[0] in data else None
    records = []
    for i in range(table.num_rows):
        timeline = tuple(
            Overlap(o["batch_id"], o["model"], o["batch_size"], o["start"], o["end"])
            for o in data["timeline"][i] or ()
        )
        records.append(
            BatchRecord(
                batch_id=data["batch_id"][i],
                model=data["model"][i],
                batch_size=data["batch_size"][i],
                slot=data["slot"][i],
                dispatch=data["dispatch"][i],
                start=data["start"][i],
                end=data["end"][i],
                timeline=timeline,
                device=data["device"][i],
                phases=_row_phases(phases, i),
            )
        )
    return records


def _row_phases(columns: list[list] | None, i: int) -> tuple[float, float, float] | None:
    if columns is None or any(column[i] is None for column in columns):
        return None
    copy_in, compute, copy_out = (float(column[i]) for column in columns)
    return copy_in, compute, copy_out


def write_trace(
    path: str | Path, records: Sequence[BatchRecord], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write `records` (with their timelines) to a Parquet trace file; returns the path."""
    path = Path(path)
    try:
        json.dumps(dict(metadata or {}))
    except (TypeError, ValueError) as exc:
        raise TraceFileError(f"trace metadata for {path} is not JSON: {exc}") from None
    table = records_to_table(records, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp)
        tmp.replace(path)  # atomic: a reader never sees half a trace
    except OSError as exc:
        raise TraceFileError(f"cannot write trace {path}: {exc.strerror or exc}") from None
    return path


def read_trace(path: str | Path) -> Trace:
    """Read a trace file written by `write_trace`; anything else is a TraceFileError."""
    path = Path(path)
    if not path.is_file():
        raise TraceFileError(f"cannot read trace {path}: no such file")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceFileError(f"cannot read trace {path}: not a Parquet file ({reason})") from None
    metadata = _metadata(path, table.schema)
    missing = [n for n in TRACE_SCHEMA.names if n not in table.schema.names]
    if missing:
        raise TraceFileError(f"trace {path} lacks columns: {', '.join(missing)}")
    schema = TRACE_SCHEMA
    if all(name in table.schema.names for name in PHASES):
        schema = pa.schema([*TRACE_SCHEMA, *PHASE_SCHEMA])
    try:
        table = table.select(schema.names).cast(schema.remove_metadata())
    except (pa.ArrowException, ValueError) as exc:
        raise TraceFileError(f"trace {path} has columns of the wrong type: {exc}") from None
    _check_values(path, table)
    return Trace(records=table_to_records(table), metadata=metadata)


_REQUIRED = ("batch_id", "model", "batch_size", "slot", "device", "dispatch", "start", "end")


def _check_values(path: Path, table: pa.Table) -> None:
    """Every batch has its fields and finite times: an edited or foreign file fails
    here, by column and row, not deep inside a fit."""
    for name in _REQUIRED:
        column = table.column(name)
        bad = pc.is_null(column)
        if pa.types.is_floating(column.type):
            bad = pc.or_(bad, pc.fill_null(pc.invert(pc.is_finite(column)), True))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise TraceFileError(f"trace {path}: row {row}: '{name}' is {column[row].as_py()!r}")


def read_trace_metadata(path: str | Path) -> dict[str, Any]:
    """Only the file-level metadata (cheap: reads the footer, not the rows)."""
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceFileError(f"cannot read trace {path}: {reason}") from None
    return _metadata(path, schema)


def _metadata(path: Path, schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise TraceFileError(f"{path} is a Parquet file but not a predlat trace (no metadata)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise TraceFileError(f"{path} has corrupt predlat metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != TRACE_FORMAT:
        raise TraceFileError(f"{path} is a Parquet file but not a predlat trace")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise TraceFileError(f"{path}: format_version {version!r} is not an integer")
    if version > TRACE_FORMAT_VERSION:
        raise TraceFileError(
            f"{path} is a trace of format version {version}; this predlat reads "
            f"up to {TRACE_FORMAT_VERSION} (upgrade predlat)"
        )
    return meta
