"""Simulated devices driven by schedulers on a virtual clock."""

from predlat.sim.simulator import ROUTES, SimResult, Simulation, build_simulation, profile_cost
from predlat.sim.synthetic import ZOO_LIKE, SyntheticModel, synthetic_profile

__all__ = [
    "ROUTES",
    "ZOO_LIKE",
    "SimResult",
    "Simulation",
    "SyntheticModel",
    "build_simulation",
    "profile_cost",
    "synthetic_profile",
]
