"""Solo profiles: what each (model, batch size) costs alone, machine peaks, graph costs."""

from predlat.profiling.graph_cost import GraphCost, graph_cost, graph_costs
from predlat.profiling.peaks import cpu_model_name, measure_peaks
from predlat.profiling.profile import (
    FEATURE_NAMES,
    BatchProfile,
    LatencyStats,
    MachineInfo,
    Profile,
)
from predlat.profiling.profiler import (
    MachineId,
    batch_features,
    cached_peaks,
    latency_stats,
    load_or_profile,
    profile_models,
)

__all__ = [
    "FEATURE_NAMES",
    "BatchProfile",
    "GraphCost",
    "LatencyStats",
    "MachineId",
    "MachineInfo",
    "Profile",
    "batch_features",
    "cached_peaks",
    "cpu_model_name",
    "graph_cost",
    "graph_costs",
    "latency_stats",
    "load_or_profile",
    "measure_peaks",
    "profile_models",
]
