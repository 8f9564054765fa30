"""The names of the conditions, their reasons and the Event reasons, in one place (as Kueue's workload_types.go).

Conditions follow Kubernetes' conventions: a ``type`` that is True when the object is in that state, a
CamelCase ``reason`` a program can match, a message for people. Phases of an AgentWorkflow are
``tessera.api.workflow.Phase``.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A condition's status."""

    true = "True"
    false = "False"
    unknown = "Unknown"

    @classmethod
    def of(cls, value: bool | None) -> "Status":
        return cls.unknown if value is None else cls.true if value else cls.false


class ConditionType(StrEnum):
    # Every Tessera resource: the spec is readable and consistent (for inventory: the planner uses it).
    valid = "Valid"
    # AgentWorkflow
    planned = "Planned"  # a feasible plan exists for the current generation
    deployed = "Deployed"  # the RayService is written as the plan says
    ready = "Ready"  # KubeRay reports the Serve application running
    slo_at_risk = "SLOAtRisk"  # the predicted latency is near the SLO target
    # PowerBudget
    within_budget = "WithinBudget"  # the plans' expected draw is inside provisioned x (1 + oversubscription)


class Reason(StrEnum):
    """Reasons of conditions and of Kubernetes Events."""

    valid = "Valid"
    invalid_spec = "InvalidSpec"
    # AgentWorkflow: Planned / Deployed / Ready / SLOAtRisk
    plan_found = "PlanFound"
    infeasible = "Infeasible"
    not_planned = "NotPlanned"
    suspended = "Suspended"
    dry_run = "DryRun"
    rayservice_applied = "RayServiceApplied"
    serve_running = "ServeRunning"
    rayservice_not_ready = "RayServiceNotReady"
    predicted_near_target = "PredictedNearTarget"
    predicted_within_target = "PredictedWithinTarget"
    # AgentWorkflow Events
    preempted = "Preempted"  # a higher-priority workflow took its devices or power
    over_power_budget = "OverPowerBudget"  # a PowerBudget shrank below what its plan expects (grace period runs)
    plan_restored = "PlanRestored"  # capacity came back: the previous plan is used again
    # PowerBudget: WithinBudget
    within_budget = "WithinBudget"
    over_budget = "OverBudget"


__all__ = ["ConditionType", "Reason", "Status"]
