"""The desired state of one AgentWorkflow, computed from the current state alone (level-based).

``desired_state`` takes the object as it is now, the inventory, what the other workflows hold, the
RayService as it is now and what this operator run remembers of the workflow, and returns the status the
object should have, the RayService it should own (or none), what its plan holds, and the Events to post.
It calls the planner but no API: the handlers apply the result.

What a workflow's plan is: the one its RayService carries (``builders.plan_from_child``), else the one in
its status. The child is written first, so after a crash between the two writes the plan is not lost and
its devices are never booked twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from pydantic import ValidationError

from tessera.api import (
    AgentWorkflow, Condition, FieldProblem, Phase, Plan, ResourceError, parse_resource, set_condition,
)
from tessera.api.conditions import ConditionType, Reason, Status
from tessera.operator.builders import build_rayservice, plan_from_child
from tessera.operator.inventory import (
    Holding, Shortfall, Snapshot, rank, reserved_by_others, shortfall, still_fits,
)
from tessera.operator.settings import OperatorSettings
from tessera.planner import plan_workflow

SLO_AT_RISK_FRACTION = 0.9  # predicted latency above this share of the target flags SLOAtRisk
WARNING, NORMAL = "Warning", "Normal"  # Kubernetes Event types


@dataclass(frozen=True)
class Memory:
    """What this operator run remembers of one workflow between reconciles (a restart forgets it)."""

    fingerprint: str | None = None  # of the inventory its plan was made against
    over_budget_since: float | None = None  # when its plan stopped fitting a PowerBudget (grace period)
    displaced: tuple[int, Plan] | None = None  # (generation, plan) given up when capacity shrank: restored if it fits again
    preempted_by: str | None = None  # set by the workflow that preempted it: the Event's message


@dataclass
class Desired:
    status: dict[str, Any]
    rayservice: dict[str, Any] | None  # None: the workflow must own no RayService
    holding: Holding
    outcome: str  # metrics label: planned, kept, infeasible, invalid, suspended
    memory: Memory = field(default_factory=Memory)
    solve_seconds: float | None = None  # set when the planner ran
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    replan_reasons: list[str] = field(default_factory=list)
    preempts: dict[str, str] = field(default_factory=dict)  # workflow key -> why it gives way
    requeue_after: float | None = None  # look again then (the end of a grace period)


def workflow_key(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}"


def parse_workflow(body: Mapping[str, Any], settings: OperatorSettings | None = None) -> AgentWorkflow:
    """The workflow without its status: a status we cannot read must not make a valid spec invalid.
    With ``settings``, also what the operator allows (the worker image), as the webhook checks it."""
    workflow: AgentWorkflow = parse_resource(  # type: ignore[assignment]
        {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
    problem = settings.worker_image_problem(workflow.spec.serve.image) if settings else None
    if problem:
        raise ResourceError("AgentWorkflow", workflow.metadata.name, [FieldProblem("spec.serve.image", problem)])
    return workflow


def current_plan(status: Mapping[str, Any]) -> Plan | None:
    raw = status.get("plan")
    if not raw:
        return None
    try:
        return Plan.model_validate(raw)
    except ValidationError:
        return None  # written by an older operator, or by hand: plan afresh


def same_plan(a: Plan | None, b: Plan | None) -> bool:
    """Equal but for the solve time, which differs on every run."""
    if a is None or b is None:
        return a is b
    return a.model_copy(update={"solve_seconds": 0}) == b.model_copy(update={"solve_seconds": 0})


def rayservice_ready(child: Mapping[str, Any] | None) -> bool:
    """KubeRay >= 1.3 reports a Ready condition; older versions serviceStatus Running."""
    if not child:
        return False
    status = child.get("status") or {}
    if any(c.get("type") == "Ready" and c.get("status") == Status.true for c in status.get("conditions") or []):
        return True
    return status.get("serviceStatus") == "Running"


def running_plan(status: Mapping[str, Any], recorded: tuple[Plan, int] | None) -> tuple[Plan | None, int | None]:
    """The plan a workflow holds and the generation it was made for: its child's (``recorded``), else its status's."""
    written = current_plan(status), status.get("observedGeneration")
    if recorded is not None and not (same_plan(recorded[0], written[0]) and recorded[1] == written[1]):
        return recorded
    return written


class Conditions:
    """Accumulates conditions onto the existing ones, each with the object's generation."""

    def __init__(self, existing: list[Any] | None, generation: int | None):
        self.items: list[Condition] = []
        for raw in existing or []:
            try:
                self.items.append(Condition.model_validate(raw))
            except ValidationError:
                continue
        self.generation = generation

    def set(self, type_: ConditionType, status: bool | None, reason: Reason, message: str = "") -> None:
        self.items = set_condition(self.items, Condition(
            type=type_, status=Status.of(status), reason=reason, message=message,
            observed_generation=self.generation))

    def get(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.items if c.type == type_), None)

    def wire(self) -> list[dict[str, Any]]:
        return [c.to_wire() for c in self.items]


def desired_state(body: Mapping[str, Any], snapshot: Snapshot, holdings: Mapping[str, Holding], memory: Memory,
                  actual_child: Mapping[str, Any] | None, settings: OperatorSettings, now: float) -> Desired:
    """``now``: a monotonic clock reading (grace periods)."""
    meta = body.get("metadata") or {}
    key = workflow_key(meta.get("namespace"), meta.get("name", "?"))
    generation = meta.get("generation")
    status = dict(body.get("status") or {})
    conditions = Conditions(status.get("conditions"), generation)
    previous_valid = conditions.get(ConditionType.valid)
    events: list[tuple[str, str, str]] = []
    if memory.preempted_by:
        events.append((WARNING, Reason.preempted, memory.preempted_by))
        memory = replace(memory, preempted_by=None)

    try:
        workflow = parse_workflow(body, settings)
    except ResourceError as err:
        message = "; ".join(str(p) for p in err.problems)
        conditions.set(ConditionType.valid, False, Reason.invalid_spec, message)
        conditions.set(ConditionType.planned, False, Reason.invalid_spec, "the spec is not valid")
        conditions.set(ConditionType.deployed, False, Reason.invalid_spec, "no RayService for an invalid spec")
        conditions.set(ConditionType.ready, False, Reason.invalid_spec, "")
        new_status = {**status, "observedGeneration": generation, "phase": Phase.invalid.value,
                      "conditions": conditions.wire(), "message": message, "plan": None, "predicted": None}
        repeated = (previous_valid is not None and previous_valid.status == Status.false
                    and previous_valid.message == message)
        if not repeated:
            events.append((WARNING, Reason.invalid_spec, f"AgentWorkflow/{err.name}: {message}"))
        return Desired(_compact(new_status), None, Holding(), "invalid", memory, events=events)

    spec = workflow.spec
    conditions.set(ConditionType.valid, True, Reason.valid, "")
    created = str(meta.get("creationTimestamp") or "")
    plan, planned_generation = running_plan(status, plan_from_child(actual_child))
    if planned_generation != generation:
        memory = replace(memory, displaced=None, over_budget_since=None)

    if spec.suspend:  # keep the plan in the status; run nothing; hold nothing
        conditions.set(ConditionType.deployed, False, Reason.suspended, "spec.suspend is true: the RayService is removed")
        conditions.set(ConditionType.ready, False, Reason.suspended, "")
        new_status = {**status, "observedGeneration": generation, "phase": Phase.suspended.value,
                      "conditions": conditions.wire(), "message": "suspended", "plan": plan.to_wire() if plan else None}
        return Desired(_compact(new_status), None, Holding(priority=spec.priority, created=created), "suspended",
                       memory, events=events)

    fingerprint = snapshot.fingerprint(spec)
    mine = snapshot.holding(plan, spec.priority, created)
    reasons, short = _replan_reasons(key, planned_generation, generation, plan, mine, holdings, fingerprint,
                                     memory.fingerprint, snapshot, running=actual_child is not None)
    grace_note, requeue_after = "", None
    if short.power and not short.devices and actual_child is not None and settings.power_budget_grace_seconds > 0:
        since = now if memory.over_budget_since is None else memory.over_budget_since
        left = settings.power_budget_grace_seconds - (now - since)
        if left > 0:  # a running workflow keeps its RayService for the grace period
            if memory.over_budget_since is None:
                events.append((WARNING, Reason.over_power_budget,
                               f"{'; '.join(short.power)}: the RayService stays for "
                               f"{settings.power_budget_grace_seconds:g} s, then the workflow is re-planned"))
            memory = replace(memory, over_budget_since=since)
            reasons, requeue_after = [], left
            grace_note = f"; over its PowerBudget, re-planned in {left:.0f} s unless it fits again"
    elif not short:
        memory = replace(memory, over_budget_since=None)

    solve_seconds = None
    outcome = "kept"
    preempts: dict[str, str] = {}
    if reasons:
        if short and plan is not None and plan.feasible and planned_generation == generation:
            memory = replace(memory, displaced=(generation, plan))
        fresh = _restorable(key, memory, generation, holdings, snapshot)
        if fresh is not None:
            memory = replace(memory, displaced=None)
            events.append((NORMAL, Reason.plan_restored, "capacity came back: the earlier plan is used again"))
        else:
            fresh = plan_workflow(spec, snapshot.inventory(*reserved_by_others(key, holdings)), solver=settings.solver)
            solve_seconds = fresh.solve_seconds
            if not fresh.feasible and settings.preemption == "LowerPriority":
                taken, preempts, extra = _preempting(key, workflow, holdings, snapshot, settings)
                fresh = taken or fresh
                solve_seconds += extra
        outcome = "planned" if fresh.feasible else "infeasible"
        if not same_plan(plan, fresh):
            plan = fresh
        memory = replace(memory, over_budget_since=None)
    memory = replace(memory, fingerprint=fingerprint)
    holding = snapshot.holding(plan, spec.priority, created)

    new_status = {**status, "observedGeneration": generation, "plan": plan.to_wire() if plan else None,
                  "predicted": plan.predicted.to_wire() if plan and plan.predicted else None}
    child = None
    if plan is None or not plan.feasible:
        why = "; ".join((plan.binding_constraints if plan else ["no plan"]) + snapshot.problems_for(spec))
        conditions.set(ConditionType.planned, False, Reason.infeasible, why)
        conditions.set(ConditionType.deployed, False, Reason.not_planned, "no feasible plan: no RayService")
        conditions.set(ConditionType.ready, False, Reason.not_planned, "")
        conditions.set(ConditionType.slo_at_risk, None, Reason.not_planned, "")
        new_status.update(phase=Phase.infeasible.value, message=why, predicted=None)
        holding = Holding(priority=spec.priority, created=created)
    else:
        conditions.set(ConditionType.planned, True, Reason.plan_found, _summary(plan))
        at_slo = plan.predicted.latency_ms_at_slo if plan.predicted else 0.0
        at_risk = at_slo > SLO_AT_RISK_FRACTION * spec.slo.latency_ms
        conditions.set(ConditionType.slo_at_risk, at_risk,
                       Reason.predicted_near_target if at_risk else Reason.predicted_within_target,
                       f"predicted p{spec.slo.percentile:g} {at_slo:.0f} ms of {spec.slo.latency_ms:g} ms")
        if spec.dry_run:
            conditions.set(ConditionType.deployed, False, Reason.dry_run, "spec.dryRun is true: planned only")
            conditions.set(ConditionType.ready, False, Reason.dry_run, "")
            new_status.update(phase=Phase.planned.value, message=_summary(plan))
            holding = Holding(priority=spec.priority, created=created)
        else:
            child = build_rayservice(workflow, plan, snapshot.classes, settings, snapshot.devices_per_pod(),
                                     snapshot.profiles)
            ready = rayservice_ready(actual_child)
            conditions.set(ConditionType.deployed, True, Reason.rayservice_applied, f"RayService {child['metadata']['name']}")
            conditions.set(ConditionType.ready, ready, Reason.serve_running if ready else Reason.rayservice_not_ready,
                           "" if ready else "waiting for KubeRay to report the Serve application running")
            new_status.update(phase=(Phase.running if ready else Phase.deploying).value,
                              message=_summary(plan) + grace_note)
    new_status["conditions"] = conditions.wire()
    return Desired(_compact(new_status), child, holding, outcome, memory, solve_seconds, events, reasons, preempts,
                   requeue_after)


def _restorable(key: str, memory: Memory, generation: int | None, holdings: Mapping[str, Holding],
                snapshot: Snapshot) -> Plan | None:
    """The plan given up when capacity shrank, if it is for this generation and fits again."""
    if memory.displaced is None or memory.displaced[0] != generation:
        return None
    plan = memory.displaced[1]
    if any(cls not in snapshot.classes for cls in plan.devices_by_class()):
        return None
    used_devices, used_watts = reserved_by_others(key, holdings)
    fits = not shortfall(snapshot.holding(plan), used_devices, used_watts, snapshot.total_devices(),
                         snapshot.watt_limits())
    return plan if fits else None


def _preempting(key: str, workflow: AgentWorkflow, holdings: Mapping[str, Holding], snapshot: Snapshot,
                settings: OperatorSettings) -> tuple[Plan | None, dict[str, str], float]:
    """A plan that takes what workflows of lower priority hold, the fewest of them, the lowest ranked first.

    Returns the plan (None when even that does not help), the workflows that give way with the Event
    message for each, and the planner's time.
    """
    spec = workflow.spec
    kept = {k: h for k, h in holdings.items() if k != key and (h.priority >= spec.priority or h.empty)}
    weaker = sorted(((k, h) for k, h in holdings.items() if k != key and k not in kept),
                    key=lambda item: rank(*item), reverse=True)
    victims: list[str] = []
    seconds = 0.0
    while weaker:
        victims.append(weaker.pop(0)[0])
        others = {**kept, **dict(weaker)}
        plan = plan_workflow(spec, snapshot.inventory(*reserved_by_others(key, others)), solver=settings.solver)
        seconds += plan.solve_seconds
        if plan.feasible:
            me = f"{workflow.metadata.namespace}/{workflow.metadata.name}"
            return plan, {v: f"preempted by {me} (priority {spec.priority}), which needed its devices or power"
                          for v in victims}, seconds
    return None, {}, seconds


def replan_reasons(body: Mapping[str, Any], snapshot: Snapshot, holdings: Mapping[str, Holding],
                   memory: Memory, recorded: tuple[Plan, int] | None) -> list[str]:
    """Why the workflow's plan must be made again now (empty: keep it); nothing for invalid or suspended ones."""
    try:
        workflow = parse_workflow(body)
    except ResourceError:
        return []
    if workflow.spec.suspend:
        return []
    meta = body.get("metadata") or {}
    plan, planned_generation = running_plan(body.get("status") or {}, recorded)
    mine = snapshot.holding(plan, workflow.spec.priority, str(meta.get("creationTimestamp") or ""))
    reasons, _ = _replan_reasons(workflow_key(meta.get("namespace"), meta.get("name", "?")), planned_generation,
                                 meta.get("generation"), plan, mine, holdings, snapshot.fingerprint(workflow.spec),
                                 memory.fingerprint, snapshot, running=recorded is not None)
    return reasons


def _replan_reasons(key: str, planned_generation: int | None, generation: int | None, plan: Plan | None,
                    mine: Holding, holdings: Mapping[str, Holding], fingerprint: str, seen_fingerprint: str | None,
                    snapshot: Snapshot, running: bool) -> tuple[list[str], Shortfall]:
    if plan is None:
        return ["no plan yet"], Shortfall()
    if planned_generation != generation:
        return ["the spec changed"], Shortfall()
    if not plan.feasible:
        return ["the last plan was infeasible"], Shortfall()
    others = {k: h for k, h in holdings.items() if k != key}
    short = still_fits(key, {**others, key: mine}, snapshot.total_devices(), snapshot.watt_limits())
    if short:
        return short.reasons(), short
    # A running plan that still fits is kept: its Ray cluster is not reshaped for a cheaper one.
    if not running and seen_fingerprint is not None and seen_fingerprint != fingerprint:
        return ["a HardwareClass, PowerBudget or ModelProfile it may use changed"], short
    return [], short


def _summary(plan: Plan) -> str:
    placed = ", ".join(f"{name} on {s.hardware_class} x{s.replicas}" for name, s in plan.stages.items())
    if not plan.predicted:
        return placed
    p = plan.predicted
    return f"{placed}; ${p.usd_per_hour:.2f}/h, {p.watts:.0f} W, {p.latency_ms_at_slo:.0f} ms at the SLO percentile"


def _compact(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if v is not None}


def status_patch(actual: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch turning ``actual`` into ``desired`` (None removes a key); {} when equal."""
    actual = actual or {}
    patch: dict[str, Any] = {k: None for k in actual if k not in desired}
    for k, v in desired.items():
        old = actual.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            sub = status_patch(old, v)
            if sub:
                patch[k] = sub
        elif v != old or k not in actual:
            patch[k] = v
    return patch
