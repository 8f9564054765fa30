"""plan_workflow: an AgentWorkflow's spec and an Inventory in, a Plan out; what_if: how a plan changes."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from tessera.api.common import format_watts
from tessera.api.plan import Plan, PredictedFigures, StagePlan
from tessera.api.workflow import AgentWorkflowSpec, Objective
from tessera.planner import cost
from tessera.planner.inventory import Inventory
from tessera.planner.problem import Problem, build_problem
from tessera.planner.solution import Relax, Solution
from tessera.planner.solvers import SOLVERS

TIGHT = 0.02  # a constraint within 2 % of its limit is reported as binding


def plan_workflow(spec: AgentWorkflowSpec, inventory: Inventory, solver: str = "fast",
                  objective: Objective | str | None = None, params: cost.CostParameters = cost.DEFAULT) -> Plan:
    """The cheapest (or fastest, or least power-hungry) placement meeting the SLO and the inventory's limits.

    Pure and deterministic. Never raises for an infeasible workflow: the Plan says feasible=False and
    ``bindingConstraints`` names what binds and by how much.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    start = time.perf_counter()
    goal = Objective(objective) if objective is not None else spec.placement.objective
    unknown = unknown_references(spec, inventory)
    if unknown:
        return Plan(feasible=False, objective=goal.value, binding_constraints=unknown,
                    solve_seconds=time.perf_counter() - start)
    problem = build_problem(spec, inventory, goal, params)
    if problem.unplaceable:
        reasons = [f"stage {name}: {why}" for name, why in problem.unplaceable.items()]
        return Plan(feasible=False, objective=goal.value, binding_constraints=reasons,
                    solve_seconds=time.perf_counter() - start)
    solve = SOLVERS[solver]
    solution = solve(problem)
    if solution.choice is None:
        return Plan(feasible=False, objective=goal.value, binding_constraints=diagnose(problem, solve),
                    solve_seconds=time.perf_counter() - start)
    return to_plan(problem, solution.choice, time.perf_counter() - start)


def unknown_references(spec: AgentWorkflowSpec, inventory: Inventory) -> list[str]:
    """References to ModelProfiles and HardwareClasses the inventory does not hold."""
    out = []
    for cls in spec.placement.allowed_classes:
        if cls not in inventory.classes:
            out.append(f"spec.placement.allowedClasses: unknown HardwareClass {cls!r}")
    for stage_name, cls in spec.placement.pinned.items():
        if cls not in inventory.classes:
            out.append(f"spec.placement.pinned.{stage_name}: unknown HardwareClass {cls!r}")
    for stage in spec.stages:
        if stage.model is not None and stage.model not in inventory.model_profiles:
            out.append(f"stage {stage.name}: unknown ModelProfile {stage.model!r}")
        sd = stage.speculative_decoding
        if sd is not None and sd.draft_model and sd.draft_model not in inventory.model_profiles:
            out.append(f"stage {stage.name}: unknown draft ModelProfile {sd.draft_model!r}")
        if sd is not None and sd.draft_placement not in ("auto", "colocated") and sd.draft_placement not in inventory.classes:
            out.append(f"stage {stage.name}: draftPlacement names unknown HardwareClass {sd.draft_placement!r}")
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _percentile(problem: Problem) -> str:
    return f"p{problem.percentile:g}"


def _generation(problem: Problem, cls: str) -> str:
    return problem.classes[cls].generation


def diagnose(problem: Problem, solve) -> list[str]:
    """Which constraint binds an infeasible problem, and by how much: drop each in turn and look at the best plan left."""
    reasons: list[str] = []
    within_resources = solve(_with_objective(problem, Objective.latency), Relax(slo=True))
    if within_resources.choice is not None:
        best, path = problem.critical_path(within_resources.choice)
        slowest = max(path, key=lambda s: problem.options[s][within_resources.choice[s]].latency_slo_s)
        opt = problem.options[slowest][within_resources.choice[slowest]]
        reasons.append(
            f"SLO {problem.slo_s * 1000:g} ms unreachable: best {_percentile(problem)} {_ms(best)} "
            f"with {problem.names[slowest]} on {_generation(problem, opt.hardware_class)}"
            f" (x{opt.replicas}, tp {opt.tensor_parallel}) within the free devices and power budgets"
        )
        return reasons
    # Even ignoring the SLO nothing fits: find the resource that binds, from the cheapest plan without it.
    for relax, label in ((Relax(slo=True, devices=True), "devices"), (Relax(slo=True, power=True), "power"),
                         (Relax(slo=True, devices=True, power=True), "both")):
        attempt = solve(problem, relax)
        if attempt.choice is None:
            continue
        if label in ("devices", "both"):
            reasons += _device_excess(problem, attempt)
        if label in ("power", "both"):
            reasons += _power_excess(problem, attempt)
        if reasons:
            return reasons
    return ["no placement satisfies the device counts and power budgets, even with the SLO ignored"]


def _with_objective(problem: Problem, objective: Objective) -> Problem:
    return replace(problem, objective=objective)


def _device_excess(problem: Problem, solution: Solution) -> list[str]:
    out = []
    for cls, used in sorted(problem.device_use(solution.choice).items()):
        free = problem.capacity.get(cls, 0)
        if used > free:
            out.append(f"devices of {cls}: the cheapest placement needs {used}, {free} free (short by {used - free})")
    return out


def _power_excess(problem: Problem, solution: Solution) -> list[str]:
    out = []
    for group, (expected, peak) in zip(problem.groups, problem.group_watts(solution.choice)):
        if expected > group.expected_limit_watts:
            out.append(
                f"PowerBudget {group.name}: expected draw {format_watts(expected)} exceeds "
                f"{_left(group.expected_limit_watts)} (over by {format_watts(expected - max(group.expected_limit_watts, 0))})"
            )
        if peak > group.peak_limit_watts:
            out.append(
                f"PowerBudget {group.name}: peak capped to {group.cap_fraction:.0%} of TDP is {format_watts(peak)}, "
                f"over {_left(group.peak_limit_watts)} by {format_watts(peak - max(group.peak_limit_watts, 0))}"
            )
    return out


def _left(watts: float) -> str:
    return f"the {format_watts(watts)} available" if watts > 0 else "the budget (no power left for this plan)"


def binding_constraints(problem: Problem, choice: list[int]) -> list[str]:
    """Constraints of a feasible plan that are at (or within 2 % of) their limit."""
    out = []
    latency, _ = problem.critical_path(choice)
    if latency >= problem.slo_s * (1 - TIGHT):
        out.append(f"SLO: {_percentile(problem)} {_ms(latency)} of {problem.slo_s * 1000:g} ms")
    for cls, used in sorted(problem.device_use(choice).items()):
        free = problem.capacity.get(cls, 0)
        if used >= free * (1 - TIGHT):
            out.append(f"devices of {cls}: {used} of {free} free in use")
    for group, (expected, peak) in zip(problem.groups, problem.group_watts(choice)):
        if expected >= group.expected_limit_watts * (1 - TIGHT):
            out.append(f"PowerBudget {group.name}: expected {format_watts(expected)} of {format_watts(group.expected_limit_watts)}")
        if peak >= group.peak_limit_watts * (1 - TIGHT):
            out.append(f"PowerBudget {group.name}: capped peak {format_watts(peak)} of {format_watts(group.peak_limit_watts)}")
    return out


def to_plan(problem: Problem, choice: list[int], solve_seconds: float) -> Plan:
    stages = {}
    usd = watts = 0.0
    for s, o in enumerate(choice):
        opt = problem.options[s][o]
        stages[problem.names[s]] = StagePlan(
            hardware_class=opt.hardware_class, replicas=opt.replicas, tensor_parallel=opt.tensor_parallel,
            batch_size=opt.batch_size, predicted_latency_ms=opt.service_s * 1000, watts=opt.watts,
            usd_per_hour=opt.usd_per_hour, draft_hardware_class=opt.draft_class,
        )
        usd += opt.usd_per_hour
        watts += opt.watts
    at_slo, _ = problem.critical_path(choice)
    median, _ = problem.critical_path(choice, slo=False)
    per_1k = usd / (problem.requests_per_second * 3600) * 1000
    return Plan(
        feasible=True, objective=problem.objective.value, stages=stages,
        predicted=PredictedFigures(latency_ms_p50=median * 1000, latency_ms_at_slo=at_slo * 1000, usd_per_hour=usd,
                                   usd_per1k_requests=per_1k, watts=watts),
        binding_constraints=binding_constraints(problem, choice), solve_seconds=solve_seconds,
    )


@dataclass(frozen=True)
class WhatIf:
    before: Plan
    after: Plan
    changes: list[str]  # one line per difference a person cares about

    def to_dict(self) -> dict:
        return {"before": self.before.to_wire(), "after": self.after.to_wire(), "changes": self.changes}


def _delta(label: str, old: float, new: float, unit: str, digits: int = 2) -> str:
    pct = f" ({(new - old) / old:+.1%})" if old else ""
    return f"{label}: {old:.{digits}f} -> {new:.{digits}f} {unit}{pct}"


def what_if(spec: AgentWorkflowSpec, before: Inventory, after: Inventory, solver: str = "fast") -> WhatIf:
    """Plan on both inventories and say what changes: feasibility, each stage's placement, $/h, latency, watts."""
    old, new = plan_workflow(spec, before, solver), plan_workflow(spec, after, solver)
    changes = []
    if old.feasible != new.feasible:
        changes.append(f"feasible: {str(old.feasible).lower()} -> {str(new.feasible).lower()}")
        if not new.feasible:
            changes += [f"binding: {b}" for b in new.binding_constraints]
    for name in [s.name for s in spec.stages]:
        a, b = old.stages.get(name), new.stages.get(name)
        if a and b:
            was, now = _placement(a), _placement(b)
            if was != now:
                changes.append(f"{name}: {was} -> {now}")
    if old.predicted and new.predicted:
        p, q = old.predicted, new.predicted
        for label, x, y, unit, digits in (
            ("usdPerHour", p.usd_per_hour, q.usd_per_hour, "$/h", 2),
            ("latencyMsAtSlo", p.latency_ms_at_slo, q.latency_ms_at_slo, "ms", 0),
            ("watts", p.watts, q.watts, "W", 0),
        ):
            if abs(x - y) > 1e-9 * max(1.0, abs(x)):
                changes.append(_delta(label, x, y, unit, digits))
    return WhatIf(old, new, changes or ["no change"])


def _placement(stage: StagePlan) -> str:
    draft = f", draft on {stage.draft_hardware_class}" if stage.draft_hardware_class else ""
    return f"{stage.hardware_class} x{stage.replicas} tp{stage.tensor_parallel} batch {stage.batch_size}{draft}"
