"""The operator's in-memory view of the fleet and of what each workflow's plan holds.

kopf indexes (see ``handlers``) keep the HardwareClass, PowerBudget, ModelProfile and Node objects;
``Snapshot`` turns them into what the planner takes. ``Holding`` is what one workflow's current plan
occupies (devices per class, expected watts per PowerBudget); the plan of a workflow is made with the
holdings of all *other* workflows reserved, so two workflows never count the same GPUs.

Capacity is shared out in rank order (priority, then age, then name): the planner takes its turns in
that order (``handlers.PlanTurns``), a feasible plan is kept while it still fits (see ``still_fits``) and
while the classes, budgets and models it may use are unchanged; when capacity shrinks, workflows ranked
higher keep their devices and the others are re-planned against what is left. A node that is added
therefore helps infeasible workflows, but does not move workflows that already run. With preemption on
(``OperatorSettings.preemption``), a workflow may also take what lower-priority ones hold. Everything here
is pure.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping

from tessera.api import AgentWorkflowSpec, HardwareClass, ModelProfile, Plan, PowerBudget
from tessera.api.common import format_watts
from tessera.planner import Inventory


@dataclass(frozen=True)
class InvalidResource:
    """An inventory object whose spec does not validate: the planner leaves it out, its status says why."""

    kind: str
    name: str
    problem: str

    def describe(self) -> str:
        return f"{self.kind} {self.name} is invalid: {self.problem}"


def slim_node(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Node the planner reads (labels, allocatable devices, cordon); the rest changes every
    few seconds (heartbeats) and must not look like an inventory change."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
        "spec": {"unschedulable": bool((body.get("spec") or {}).get("unschedulable"))},
        "status": {"allocatable": dict((body.get("status") or {}).get("allocatable") or {})},
    }


@dataclass(frozen=True)
class Holding:
    """What a workflow's current plan occupies, and its rank when capacity must be shared out."""

    devices: dict[str, int] = field(default_factory=dict)
    watts: dict[str, float] = field(default_factory=dict)  # expected watts per PowerBudget
    priority: int = 0
    created: str = ""

    @property
    def empty(self) -> bool:
        return not self.devices and not self.watts


@dataclass(frozen=True)
class Shortfall:
    """Why a holding does not fit: too few devices, or too little power (only power allows a grace period)."""

    devices: list[str] = field(default_factory=list)
    power: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.devices or self.power)

    def reasons(self) -> list[str]:
        return self.devices + self.power


def rank(key: str, holding: Holding) -> tuple:
    """Higher priority first, then older, then by name: who keeps devices when there are too few."""
    return (-holding.priority, holding.created, key)


@dataclass(frozen=True)
class Snapshot:
    """The inventory as the operator sees it at one moment."""

    classes: dict[str, HardwareClass]
    nodes: list[dict[str, Any]]
    budgets: dict[str, PowerBudget]
    profiles: dict[str, ModelProfile]
    invalid: dict[str, InvalidResource] = field(default_factory=dict)  # "Kind/name" -> what is wrong

    def inventory(self, reserved_devices: Mapping[str, int] | None = None,
                  reserved_watts: Mapping[str, float] | None = None) -> Inventory:
        return self._unreserved.with_reserved(reserved_devices, reserved_watts)

    def budget_classes(self, budget: PowerBudget) -> set[str]:
        return set(budget.spec.hardware_classes or self.classes)

    def holding(self, plan: Plan | None, priority: int = 0, created: str = "") -> Holding:
        """Devices and expected watts of a feasible plan; a stage's watts count against every PowerBudget
        that covers its class."""
        if plan is None or not plan.feasible:
            return Holding(priority=priority, created=created)
        watts: dict[str, float] = {}
        for budget in self.budgets.values():
            covered = self.budget_classes(budget)
            drawn = sum(stage.watts for stage in plan.stages.values() if stage.hardware_class in covered)
            if drawn:
                watts[budget.metadata.name] = drawn
        return Holding(devices=plan.devices_by_class(), watts=watts, priority=priority, created=created)

    def fingerprint(self, spec: AgentWorkflowSpec) -> str:
        """Hash of the inventory a workflow's plan depends on, node counts aside: the specs of the classes
        it may use, of the PowerBudgets over them, and of the ModelProfiles it names."""
        allowed = set(spec.placement.allowed_classes) or set(self.classes)
        models = {s.model for s in spec.stages if s.model}
        models |= {s.speculative_decoding.draft_model for s in spec.stages
                   if s.speculative_decoding and s.speculative_decoding.draft_model}
        parts = {
            "classes": {n: c.spec.to_wire() for n, c in sorted(self.classes.items()) if n in allowed},
            "budgets": {n: b.spec.to_wire() for n, b in sorted(self.budgets.items())
                        if self.budget_classes(b) & allowed},
            "models": {n: p.spec.to_wire() for n, p in sorted(self.profiles.items()) if n in models},
            "invalid": sorted(key for key, bad in self.invalid.items()
                              if bad.name in allowed or bad.name in models or bad.kind == "PowerBudget"),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @cached_property
    def _unreserved(self) -> Inventory:
        return Inventory.build(self.classes.values(), self.nodes, self.budgets.values(), self.profiles.values())

    def total_devices(self) -> dict[str, int]:
        return self._unreserved.total_devices

    def devices_per_pod(self) -> dict[str, int]:
        return self._unreserved.devices_per_pod

    def watt_limits(self) -> dict[str, float]:
        return {name: b.spec.expected_limit_watts() for name, b in self.budgets.items()}

    def problems_for(self, spec: AgentWorkflowSpec) -> list[str]:
        """What is wrong with the invalid inventory a workflow may use: named in its message when it cannot be planned."""
        allowed = set(spec.placement.allowed_classes) | set(spec.placement.pinned.values())
        models = {s.model for s in spec.stages if s.model}
        return [bad.describe() for _, bad in sorted(self.invalid.items())
                if (bad.kind == "HardwareClass" and (not allowed or bad.name in allowed))
                or (bad.kind == "ModelProfile" and bad.name in models) or bad.kind == "PowerBudget"]


def reserved_by_others(key: str, holdings: Mapping[str, Holding]) -> tuple[dict[str, int], dict[str, float]]:
    devices: dict[str, int] = {}
    watts: dict[str, float] = {}
    for other, holding in holdings.items():
        if other == key:
            continue
        for cls, n in holding.devices.items():
            devices[cls] = devices.get(cls, 0) + n
        for budget, w in holding.watts.items():
            watts[budget] = watts.get(budget, 0.0) + w
    return devices, watts


def shortfall(mine: Holding, used_devices: Mapping[str, int], used_watts: Mapping[str, float],
              total_devices: Mapping[str, int], watt_limits: Mapping[str, float]) -> Shortfall:
    """What ``mine`` lacks beside what others use (empty: it fits)."""
    out = Shortfall()
    for cls, n in sorted(mine.devices.items()):
        free = total_devices.get(cls, 0) - used_devices.get(cls, 0)
        if n > free:
            out.devices.append(f"devices of {cls}: the plan holds {n}, {max(free, 0)} left for it")
    for budget, w in sorted(mine.watts.items()):
        left = watt_limits.get(budget, float("inf")) - used_watts.get(budget, 0.0)
        if w > left + 1e-6:
            out.power.append(f"PowerBudget {budget}: the plan expects {format_watts(w)}, "
                             f"{format_watts(max(left, 0))} left for it")
    return out


def still_fits(key: str, holdings: Mapping[str, Holding], total_devices: Mapping[str, int],
               watt_limits: Mapping[str, float]) -> Shortfall:
    """What ``key``'s holding lacks once the workflows ranked before it take theirs (empty: it fits)."""
    mine = holdings.get(key)
    if mine is None or mine.empty:
        return Shortfall()
    before = {k: h for k, h in holdings.items() if k != key and rank(k, h) < rank(key, mine)}
    used_devices, used_watts = reserved_by_others(key, before)
    return shortfall(mine, used_devices, used_watts, total_devices, watt_limits)


def planned_watts(holdings: Iterable[Holding]) -> dict[str, float]:
    """Expected watts per PowerBudget of all the given holdings."""
    out: dict[str, float] = {}
    for holding in holdings:
        for budget, watts in holding.watts.items():
            out[budget] = out.get(budget, 0.0) + watts
    return out


def first_values(index: Mapping[Any, Iterable[Any]]) -> dict[Any, Any]:
    """A kopf index (key -> store of values) as key -> its one value."""
    out = {}
    for key, store in index.items():
        for value in store:
            out[key] = value
            break
    return out
