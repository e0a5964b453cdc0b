"""The funnelwatch clickstream simulator: a seeded, vectorised online store with injectable
incidents and their ground truth.

    from simulator import SimulationConfig, simulate, write_simulation, load_incidents
    cfg = SimulationConfig(start="2026-11-01", end="2026-11-22", sessions_per_hour=1500,
                           seed=42, incidents=load_incidents("default"))
    result = simulate(cfg)
    write_simulation(result, "data/landing", "data/ground_truth.json")

See docs/simulator.md.
"""

from simulator.generate import SimulationConfig, SimulationResult, simulate, write_simulation
from simulator.incidents import INCIDENT_TYPES, IncidentSpec, LateDelivery, load_incidents

__all__ = [
    "INCIDENT_TYPES",
    "IncidentSpec",
    "LateDelivery",
    "SimulationConfig",
    "SimulationResult",
    "load_incidents",
    "simulate",
    "write_simulation",
]
