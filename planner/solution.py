"""What both solvers share: the problem's limits, what may be relaxed, and what a solution is.

A solution picks one StageOption per stage. Constraints: the critical path at the SLO percentile within
the SLO, devices per class within the free ones, and per power group the expected draw within
provisioned x (1 + oversubscription) and the peak, capped to the all-cap level, within provisioned.
``Relax`` drops constraints, which is how an infeasible answer finds the constraint that binds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tessera.api.workflow import Objective
from tessera.planner.problem import Problem


@dataclass(frozen=True)
class Relax:
    slo: bool = False
    devices: bool = False
    power: bool = False


@dataclass
class Solution:
    choice: list[int] | None  # option index per stage; None when no feasible choice was found
    seconds: float


def limits(problem: Problem, relax: Relax) -> tuple[float, dict[str, float], list[tuple[float, float]]]:
    slo = math.inf if relax.slo else problem.slo_s
    capacity = {c: (math.inf if relax.devices else float(n)) for c, n in problem.capacity.items()}
    groups = [(math.inf, math.inf) if relax.power else (g.expected_limit_watts, g.peak_limit_watts) for g in problem.groups]
    return slo, capacity, groups


def feasible(problem: Problem, choice: list[int], relax: Relax = Relax(), tolerance: float = 1e-9) -> bool:
    slo, capacity, groups = limits(problem, relax)
    if problem.critical_path(choice)[0] > slo * (1 + tolerance):
        return False
    if any(n > capacity.get(c, 0) for c, n in problem.device_use(choice).items()):
        return False
    return all(e <= le * (1 + tolerance) and p <= lp * (1 + tolerance)
               for (e, p), (le, lp) in zip(problem.group_watts(choice), groups))


def objective_of(problem: Problem, choice: list[int]) -> float:
    """The figure the objective minimizes: $/h, watts, or the end-to-end latency at the SLO percentile."""
    if problem.objective is Objective.latency:
        return problem.critical_path(choice)[0]
    return sum(problem.objective_value(problem.options[s][o]) for s, o in enumerate(choice))

