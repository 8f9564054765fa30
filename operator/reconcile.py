"""The desired state of one AgentWorkflow, computed from the current state alone (level-based).

``desired_state`` takes the object as it is now, the inventory, what the other workflows hold and the
RayService as it is now, and returns the status the object should have, the RayService it should own
(or none), and what its plan holds. It calls the planner but no API: the handlers apply the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import ValidationError

from tessera.api import AgentWorkflow, Condition, Phase, Plan, ResourceError, parse_resource, set_condition
from tessera.operator.builders import build_rayservice
from tessera.operator.inventory import Holding, Snapshot, reserved_by_others, still_fits
from tessera.operator.settings import OperatorSettings
from tessera.planner import plan_workflow

SLO_AT_RISK_FRACTION = 0.9  # predicted latency above this share of the target flags SLOAtRisk


@dataclass
class Desired:
    status: dict[str, Any]
    rayservice: dict[str, Any] | None  # None: the workflow must own no RayService
    holding: Holding
    outcome: str  # metrics label: planned, kept, infeasible, invalid, suspended
    fingerprint: str | None = None
    solve_seconds: float | None = None  # set when the planner ran
    warning: tuple[str, str] | None = None  # (reason, message) for a Kubernetes Event
    replan_reasons: list[str] = field(default_factory=list)


def workflow_key(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}"


def parse_workflow(body: Mapping[str, Any]) -> AgentWorkflow:
    """The workflow without its status: a status we cannot read must not make a valid spec invalid."""
    return parse_resource({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})  # type: ignore[return-value]


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
    if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
        return True
    return status.get("serviceStatus") == "Running"


class _Conditions:
    """Accumulates conditions onto the existing ones, each with the object's generation."""

    def __init__(self, existing: list[Any], generation: int | None):
        self.items: list[Condition] = []
        for raw in existing or []:
            try:
                self.items.append(Condition.model_validate(raw))
            except ValidationError:
                continue
        self.generation = generation

    def set(self, type_: str, status: bool | None, reason: str, message: str = "") -> None:
        value = "Unknown" if status is None else ("True" if status else "False")
        self.items = set_condition(self.items, Condition(
            type=type_, status=value, reason=reason, message=message, observed_generation=self.generation))

    def get(self, type_: str) -> Condition | None:
        return next((c for c in self.items if c.type == type_), None)

    def wire(self) -> list[dict[str, Any]]:
        return [c.to_wire() for c in self.items]


def desired_state(body: Mapping[str, Any], snapshot: Snapshot, holdings: Mapping[str, Holding],
                  seen_fingerprint: str | None, actual_child: Mapping[str, Any] | None,
                  settings: OperatorSettings) -> Desired:
    meta = body.get("metadata") or {}
    key = workflow_key(meta.get("namespace"), meta.get("name", "?"))
    generation = meta.get("generation")
    status = dict(body.get("status") or {})
    conditions = _Conditions(status.get("conditions"), generation)
    previous_valid = conditions.get("Valid")

    try:
        workflow = parse_workflow(body)
    except ResourceError as err:
        message = "; ".join(str(p) for p in err.problems)
        conditions.set("Valid", False, "InvalidSpec", message)
        conditions.set("Planned", False, "InvalidSpec", "the spec is not valid")
        conditions.set("Deployed", False, "InvalidSpec", "no RayService for an invalid spec")
        conditions.set("Ready", False, "InvalidSpec", "")
        new_status = {**status, "observedGeneration": generation, "phase": Phase.invalid.value,
                      "conditions": conditions.wire(), "message": message, "plan": None, "predicted": None}
        repeated = previous_valid is not None and previous_valid.status == "False" and previous_valid.message == message
        return Desired(_compact(new_status), None, Holding(), "invalid",
                       warning=None if repeated else ("InvalidSpec", f"AgentWorkflow/{err.name}: {message}"))

    spec = workflow.spec
    conditions.set("Valid", True, "Valid", "")
    created = str(meta.get("creationTimestamp") or "")
    plan = current_plan(status)

    if spec.suspend:  # keep the plan in the status; run nothing; hold nothing
        conditions.set("Deployed", False, "Suspended", "spec.suspend is true: the RayService is removed")
        conditions.set("Ready", False, "Suspended", "")
        new_status = {**status, "observedGeneration": generation, "phase": Phase.suspended.value,
                      "conditions": conditions.wire(), "message": "suspended"}
        return Desired(_compact(new_status), None, Holding(priority=spec.priority, created=created), "suspended")

    fingerprint = snapshot.fingerprint(spec)
    mine = snapshot.holding(plan, spec.priority, created)
    reasons = _replan_reasons(key, status, generation, plan, mine, holdings, fingerprint, seen_fingerprint, snapshot)
    solve_seconds = None
    outcome = "kept"
    if reasons:
        reserved_devices, reserved_watts = reserved_by_others(key, holdings)
        fresh = plan_workflow(spec, snapshot.inventory(reserved_devices, reserved_watts), solver=settings.solver)
        solve_seconds = fresh.solve_seconds
        outcome = "planned" if fresh.feasible else "infeasible"
        if not same_plan(plan, fresh):
            plan = fresh
    holding = snapshot.holding(plan, spec.priority, created)

    new_status = {**status, "observedGeneration": generation, "plan": plan.to_wire() if plan else None,
                  "predicted": plan.predicted.to_wire() if plan and plan.predicted else None}
    child = None
    if plan is None or not plan.feasible:
        why = "; ".join(plan.binding_constraints) if plan else "no plan"
        conditions.set("Planned", False, "Infeasible", why)
        conditions.set("Deployed", False, "NotPlanned", "no feasible plan: no RayService")
        conditions.set("Ready", False, "NotPlanned", "")
        conditions.set("SLOAtRisk", None, "NotPlanned", "")
        new_status.update(phase=Phase.infeasible.value, message=why, predicted=None)
        holding = Holding(priority=spec.priority, created=created)
    else:
        conditions.set("Planned", True, "PlanFound", _summary(plan))
        at_slo = plan.predicted.latency_ms_at_slo if plan.predicted else 0.0
        conditions.set("SLOAtRisk", at_slo > SLO_AT_RISK_FRACTION * spec.slo.latency_ms,
                       "PredictedNearTarget" if at_slo > SLO_AT_RISK_FRACTION * spec.slo.latency_ms
                       else "PredictedWithinTarget",
                       f"predicted p{spec.slo.percentile:g} {at_slo:.0f} ms of {spec.slo.latency_ms:g} ms")
        if spec.dry_run:
            conditions.set("Deployed", False, "DryRun", "spec.dryRun is true: planned only")
            conditions.set("Ready", False, "DryRun", "")
            new_status.update(phase=Phase.planned.value, message=_summary(plan))
            holding = Holding(priority=spec.priority, created=created)
        else:
            child = build_rayservice(workflow, plan, snapshot.classes, settings)
            ready = rayservice_ready(actual_child)
            conditions.set("Deployed", True, "RayServiceApplied", f"RayService {child['metadata']['name']}")
            conditions.set("Ready", ready, "ServeRunning" if ready else "RayServiceNotReady",
                           "" if ready else "waiting for KubeRay to report the Serve application running")
            new_status.update(phase=(Phase.running if ready else Phase.deploying).value, message=_summary(plan))
    new_status["conditions"] = conditions.wire()
    return Desired(_compact(new_status), child, holding, outcome, fingerprint, solve_seconds, None, reasons)


def replan_reasons(body: Mapping[str, Any], snapshot: Snapshot, holdings: Mapping[str, Holding],
                   seen_fingerprint: str | None) -> list[str]:
    """Why the workflow's plan must be made again now (empty: keep it); nothing for invalid or suspended ones."""
    try:
        workflow = parse_workflow(body)
    except ResourceError:
        return []
    if workflow.spec.suspend:
        return []
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    plan = current_plan(status)
    mine = snapshot.holding(plan, workflow.spec.priority, str(meta.get("creationTimestamp") or ""))
    return _replan_reasons(workflow_key(meta.get("namespace"), meta.get("name", "?")), status, meta.get("generation"),
                           plan, mine, holdings, snapshot.fingerprint(workflow.spec), seen_fingerprint, snapshot)


def _replan_reasons(key, status, generation, plan, mine, holdings, fingerprint, seen_fingerprint,
                    snapshot: Snapshot) -> list[str]:
    if plan is None:
        return ["no plan yet"]
    if status.get("observedGeneration") != generation:
        return ["the spec changed"]
    if not plan.feasible:
        return ["the last plan was infeasible"]
    if seen_fingerprint is not None and seen_fingerprint != fingerprint:
        return ["a HardwareClass, PowerBudget or ModelProfile it may use changed"]
    others = {k: h for k, h in holdings.items() if k != key}
    return still_fits(key, {**others, key: mine}, snapshot.total_devices(), snapshot.watt_limits())


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
