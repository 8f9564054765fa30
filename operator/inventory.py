"""The operator's in-memory view of the fleet and of what each workflow's plan holds.

kopf indexes (see ``handlers``) keep the HardwareClass, PowerBudget, ModelProfile and Node objects;
``Snapshot`` turns them into what the planner takes. ``Holding`` is what one workflow's current plan
occupies (devices per class, expected watts per PowerBudget); the plan of a workflow is made with the
holdings of all *other* workflows reserved, so two workflows never count the same GPUs.

Order-dependence we accept: capacity is first come, first served. A feasible plan is kept while it still
fits (see ``still_fits``) and while the classes, budgets and models it may use are unchanged; when capacity
shrinks, workflows ranked higher (priority, then age) keep their devices and the others are re-planned
against what is left. A node that is added therefore helps infeasible workflows, but does not move
workflows that already run. Everything here is pure.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from tessera.api import AgentWorkflowSpec, HardwareClass, ModelProfile, Plan, PowerBudget
from tessera.operator.builders import devices_by_class
from tessera.planner import Inventory


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

    def inventory(self, reserved_devices: Mapping[str, int] | None = None,
                  reserved_watts: Mapping[str, float] | None = None) -> Inventory:
        return Inventory.build(
            self.classes.values(), self.nodes, self.budgets.values(), self.profiles.values(),
            reserved_devices=reserved_devices, reserved_watts=reserved_watts,
        )

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
        return Holding(devices=devices_by_class(plan), watts=watts, priority=priority, created=created)

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
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def total_devices(self) -> dict[str, int]:
        return self.inventory().total_devices

    def watt_limits(self) -> dict[str, float]:
        """Expected-draw limit per PowerBudget: provisioned x (1 + oversubscription)."""
        return {name: b.spec.provisioned_watts * (1 + b.spec.oversubscription_percent / 100)
                for name, b in self.budgets.items()}


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


def still_fits(key: str, holdings: Mapping[str, Holding], total_devices: Mapping[str, int],
               watt_limits: Mapping[str, float]) -> list[str]:
    """Why ``key``'s holding no longer fits once the workflows ranked before it take theirs (empty: it fits)."""
    mine = holdings.get(key)
    if mine is None or mine.empty:
        return []
    before = {k: h for k, h in holdings.items() if k != key and rank(k, h) < rank(key, mine)}
    used_devices, used_watts = reserved_by_others(key, before)
    reasons = []
    for cls, n in sorted(mine.devices.items()):
        free = total_devices.get(cls, 0) - used_devices.get(cls, 0)
        if n > free:
            reasons.append(f"devices of {cls}: the plan holds {n}, {max(free, 0)} left for it")
    for budget, w in sorted(mine.watts.items()):
        if budget in watt_limits and w > watt_limits[budget] - used_watts.get(budget, 0.0) + 1e-6:
            reasons.append(f"PowerBudget {budget}: the plan expects {w:.0f} W, "
                           f"{max(watt_limits[budget] - used_watts.get(budget, 0.0), 0):.0f} W left for it")
    return reasons


def first_values(index: Mapping[Any, Iterable[Any]]) -> dict[Any, Any]:
    """A kopf index (key -> store of values) as key -> its one value."""
    out = {}
    for key, store in index.items():
        for value in store:
            out[key] = value
            break
    return out
