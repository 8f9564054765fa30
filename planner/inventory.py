"""What the planner may place onto: hardware classes, free devices per class, power budgets, model profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from tessera.api.hardware import HardwareClass, HardwareClassSpec
from tessera.api.model_profile import ModelProfile, ModelProfileSpec
from tessera.api.power import PowerBudget


def _labels(node: Mapping[str, Any]) -> dict[str, str]:
    meta = node.get("metadata") or {}
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return labels if isinstance(labels, dict) else {}


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _device_count(node: Mapping[str, Any], resource_name: str | None) -> int:
    """Devices a Node offers: status.allocatable[resourceName]; a CPU class (no resource) counts the Node as one."""
    if resource_name is None:
        return 1
    status = node.get("status") or {}
    allocatable = status.get("allocatable") if isinstance(status, dict) else None
    raw = allocatable.get(resource_name) if isinstance(allocatable, dict) else None
    try:
        return max(0, int(str(raw)))
    except (TypeError, ValueError):
        return 0  # absent or not an integer quantity: the Node offers no such device


def _schedulable(node: Mapping[str, Any]) -> bool:
    spec = node.get("spec") or {}
    return not (isinstance(spec, dict) and spec.get("unschedulable"))


def devices_from_nodes(hardware_classes: Iterable[HardwareClass], nodes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Devices per HardwareClass, counted from Node objects (dicts as the API server returns them).

    A Node belongs to a class when its labels match the class's nodeSelector (default
    ``tessera.dev/hardware-class=<class>``); cordoned Nodes (spec.unschedulable) count for nothing.
    """
    classes = list(hardware_classes)
    counts = {cls.metadata.name: 0 for cls in classes}
    for node in nodes:
        if not _schedulable(node):
            continue
        labels = _labels(node)
        for cls in classes:
            if _matches(labels, cls.selector()):
                counts[cls.metadata.name] += _device_count(node, cls.spec.resource_name)
    return counts


@dataclass(frozen=True)
class PowerGroup:
    """One PowerBudget as the planner sees it: which classes draw from it and how much is left."""

    name: str
    classes: frozenset[str]
    expected_limit_watts: float  # provisioned x (1 + oversubscription), less what other plans expect to draw
    peak_limit_watts: float  # provisioned, less other plans' share: the capped peak must stay inside
    cap_fraction: float  # the all-cap level (fraction of TDP) capping can force every device down to
    provisioned_watts: float
    oversubscription_percent: float


@dataclass(frozen=True)
class Inventory:
    classes: dict[str, HardwareClassSpec]
    free_devices: dict[str, int]  # devices per class not held by other workflows' plans
    total_devices: dict[str, int]
    power_groups: tuple[PowerGroup, ...] = ()
    model_profiles: dict[str, ModelProfileSpec] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        hardware_classes: Iterable[HardwareClass],
        nodes: Iterable[Mapping[str, Any]],
        power_budgets: Iterable[PowerBudget] = (),
        model_profiles: Iterable[ModelProfile] = (),
        reserved_devices: Mapping[str, int] | None = None,
        reserved_watts: Mapping[str, float] | None = None,
    ) -> "Inventory":
        """``reserved_devices`` (per class) and ``reserved_watts`` (expected watts per PowerBudget) are what other
        workflows' plans already hold; the operator passes them so that plans never double-book."""
        hardware_classes = list(hardware_classes)
        reserved_devices = dict(reserved_devices or {})
        reserved_watts = dict(reserved_watts or {})
        total = devices_from_nodes(hardware_classes, nodes)
        free = {name: max(0, count - int(reserved_devices.get(name, 0))) for name, count in total.items()}
        class_names = [hc.metadata.name for hc in hardware_classes]
        groups = []
        for budget in power_budgets:
            spec = budget.spec
            covered = frozenset(spec.hardware_classes or class_names)
            held = float(reserved_watts.get(budget.metadata.name, 0.0))
            groups.append(PowerGroup(
                name=budget.metadata.name,
                classes=covered,
                expected_limit_watts=spec.provisioned_watts * (1 + spec.oversubscription_percent / 100) - held,
                peak_limit_watts=spec.provisioned_watts - held,
                cap_fraction=spec.capping.all_cap_percent / 100,
                provisioned_watts=spec.provisioned_watts,
                oversubscription_percent=spec.oversubscription_percent,
            ))
        return cls(
            classes={hc.metadata.name: hc.spec for hc in hardware_classes},
            free_devices=free,
            total_devices=total,
            power_groups=tuple(groups),
            model_profiles={mp.metadata.name: mp.spec for mp in model_profiles},
        )

    def replace_devices(self, free_devices: Mapping[str, int]) -> "Inventory":
        """The same inventory with other free-device counts (what-if questions, property tests)."""
        return Inventory(self.classes, dict(free_devices), self.total_devices, self.power_groups, self.model_profiles)
