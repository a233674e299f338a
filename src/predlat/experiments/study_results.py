"""The study's typed results, and the results.json document built from them.

results.json keys (every error a mean relative error |predicted - actual| / actual):
    regimes.<regime>.predictors.<name>.mean_rel_err   forecast mode; posterior mode as
                                                      <name>-posterior
    regimes.<regime>.colocation_floor.mean_rel_err    weighted like the test batches per K
    regimes.<regime>.unseen.predictors.<name>          leave-one-configuration-out
    unseen.predictors.<name>.mean_rel_err             the same, for the main regime
    shift.<factor>.<name>.recovery_batches            null where it never holds
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from predlat import __version__
from predlat.profiling.profile import MachineInfo, Profile
from predlat.traces.collect import summarize

from .colocation_floor import floor_for
from .floors import FloorSummary
from .study_config import REGIME_ORDER, EvalConfig, StudyConfig
from .study_data import StudyData, StudyTrace, to_jsonable
from .study_eval import STAT_KEYS, ErrorStats, RegimeEvaluation
from .study_shift import ShiftEvaluation


@dataclass
class RegimeResult:
    evaluation: RegimeEvaluation
    colocation_floor: FloorSummary | None  # the per-K floor of this regime's K values

    @property
    def name(self) -> str:
        return self.evaluation.regime

    @property
    def ks(self) -> list[int]:
        return sorted({t.concurrency for t in self.evaluation.traces})


@dataclass
class StudyResults:
    source: str  # "measured", or the folder the traces were read from
    machine: MachineInfo
    evaluation: EvalConfig
    regimes: dict[str, RegimeResult]  # main regime first
    noise_floor: FloorSummary | None = None
    colocation_floor: FloorSummary | None = None  # per K, as measured
    shifts: dict[str, ShiftEvaluation] = field(default_factory=dict)
    config: StudyConfig | None = None
    per_trace: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)

    @property
    def main_regime(self) -> str:
        return next(iter(self.regimes))

    @property
    def traces(self) -> list[StudyTrace]:
        return [t for r in self.regimes.values() for t in r.evaluation.traces]

    def to_json(self) -> dict[str, Any]:
        main = self.regimes[self.main_regime]
        doc: dict[str, Any] = {
            "predlat_version": __version__,
            "source": self.source,
            "config": None if self.config is None else self.config.to_json(),
            "evaluation": asdict(self.evaluation),
            "machine": asdict(self.machine),
            "main_regime": self.main_regime,
            "noise_floor": _floor_json(self.noise_floor, "per_model"),
            "colocation_floor": _floor_json(self.colocation_floor, "per_k"),
            "regimes": {name: _regime_json(r) for name, r in self.regimes.items()},
            "unseen": {
                "regime": self.main_regime,
                "predictors": _unseen_json(main.evaluation),
            },
            "shift": {
                f: {n: _shift_json(s) for n, s in e.predictors.items()}
                for f, e in self.shifts.items()
            },
            "shift_traces": {f: _shift_info(e) for f, e in self.shifts.items()},
            "per_trace": self.per_trace,
            "foreign_cpu": self.foreign_cpu(),
            "timings": dict(self.timings),
            "plots": dict(self.plots),
        }
        return to_jsonable(doc)

    def foreign_cpu(self) -> dict[str, Any]:
        """How much CPU other processes took while this study measured (None: unknown)."""
        values = [t.foreign_cpu_frac for t in self.traces if t.foreign_cpu_frac is not None]
        return {
            "traces_mean": float(np.mean(values)) if values else None,
            "traces_max": float(np.max(values)) if values else None,
            "noise_floor": (self.noise_floor.info if self.noise_floor else {}).get(
                "foreign_cpu_frac"
            ),
            "colocation_floor": (self.colocation_floor.info if self.colocation_floor else {}).get(
                "foreign_cpu_frac"
            ),
        }


def build_results(
    data: StudyData,
    evaluations: list[RegimeEvaluation],
    shifts: dict[str, ShiftEvaluation],
    evaluation: EvalConfig,
    config: StudyConfig | None = None,
) -> StudyResults:
    order = {name: i for i, name in enumerate(REGIME_ORDER)}
    regimes = {
        e.regime: RegimeResult(e, floor_for(data.colocation_floor, e.batches_per_k()))
        for e in sorted(evaluations, key=lambda e: order.get(e.regime, len(order)))
    }
    results = StudyResults(
        source=data.source,
        machine=data.profile.machine,
        evaluation=evaluation,
        regimes=regimes,
        noise_floor=data.noise_floor,
        colocation_floor=data.colocation_floor,
        shifts=shifts,
        config=config,
    )
    results.per_trace = [
        row for r in regimes.values() for row in per_trace_rows(r.evaluation, data.profile)
    ]
    return results


def per_trace_rows(evaluation: RegimeEvaluation, profile: Profile) -> list[dict[str, Any]]:
    rows = []
    for index, trace in enumerate(evaluation.traces):
        summary = summarize(trace.records, profile)
        rows.append(
            {
                "name": trace.name,
                "set": trace.set_name,
                "models": list(trace.models),
                "concurrency": trace.concurrency,
                "load": trace.load,
                "regime": trace.regime,
                "batches": summary.batches,
                "mean_concurrency": summary.mean_concurrency,
                "mean_slowdown": summary.mean_slowdown,
                "overlapped_frac": summary.overlapped_frac,
                "dropped_requests": trace.dropped,
                "foreign_cpu_frac": trace.foreign_cpu_frac,
                "mean_rel_err": {
                    n: evaluation.trace_error(n, index) for n in evaluation.predictions
                },
            }
        )
    return rows


def stats_json(s: ErrorStats) -> dict[str, Any]:
    out: dict[str, Any] = {k: getattr(s, k) for k in STAT_KEYS}
    out["batches"] = s.batches
    out["per_model"] = dict(s.per_model)
    out["per_k"] = {str(k): v for k, v in s.per_k.items()}
    if s.fit_s is not None:
        out["fit_s"] = s.fit_s
    return out


def _unseen_json(e: RegimeEvaluation) -> dict[str, Any]:
    return {
        n: {
            "mean_rel_err": s.mean_rel_err,
            "batches": s.batches,
            "per_k": {str(k): v for k, v in s.per_k.items()},
            "in_distribution_mean_rel_err": e.predictors[n].mean_rel_err,
        }
        for n, s in e.unseen.items()
        if s.batches
    }


def _regime_json(r: RegimeResult) -> dict[str, Any]:
    e = r.evaluation
    return {
        "ks": r.ks,
        "traces": [t.name for t in e.traces],
        "train_batches": e.train_batches,
        "test_batches": e.test_batches,
        "test_batches_per_k": {str(k): v for k, v in e.batches_per_k().items()},
        "predictors": {n: stats_json(s) for n, s in e.predictors.items()},
        "colocation_floor": _floor_json(r.colocation_floor, "per_k"),
        "unseen": {"predictors": _unseen_json(e)},
    }


def _floor_json(floor: FloorSummary | None, group: str) -> dict[str, Any] | None:
    return None if floor is None else floor.to_json(group)


def _shift_json(s: Any) -> dict[str, Any]:
    data = asdict(s)
    data.pop("errors")
    return data


def _shift_info(e: ShiftEvaluation) -> dict[str, Any]:
    return {
        "before": e.before.name,
        "after": e.after.name,
        "train_batches": e.train_batches,
        "before_batches": e.shift_index,
        "after_batches": len(e.after.records),
    }
