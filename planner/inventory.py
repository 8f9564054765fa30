"""What the planner may place onto: hardware classes, free devices per class, power budgets, model profiles."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Iterable, Mapping

from tessera.api.hardware import HardwareClass, HardwareClassSpec, PodResources
from tessera.api.model_profile import ModelProfile, ModelProfileSpec
from tessera.api.power import PowerBudget


def _labels(node: Mapping[str, Any]) -> dict[str, str]:
    meta = node.get("metadata") or {}
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return labels if isinstance(labels, dict) else {}


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


QUANTITY_SUFFIXES = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                     "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zA-Z]{0,2})$")


def parse_quantity(raw: Any) -> float | None:
    """A Kubernetes quantity ("192", "191500m", "1536Gi") as a number; None when absent or unreadable."""
    match = QUANTITY.match(str(raw).strip()) if raw is not None and raw != "None" else None
    if match is None or match.group(2) not in QUANTITY_SUFFIXES:
        return None
    return float(match.group(1)) * QUANTITY_SUFFIXES[match.group(2)]


def _allocatable(node: Mapping[str, Any]) -> Mapping[str, Any]:
    status = node.get("status") or {}
    allocatable = status.get("allocatable") if isinstance(status, dict) else None
    return allocatable if isinstance(allocatable, dict) else {}


def _device_count(node: Mapping[str, Any], spec: HardwareClassSpec) -> int:
    """Devices a Node offers: status.allocatable[resourceName] (a CPU class, without a resource, counts the
    Node as one), no more than the Node's allocatable CPU and host memory can serve at the class's podResources."""
    allocatable = _allocatable(node)
    return _devices_offered(*(str(allocatable.get(key)) for key in (spec.resource_name, "cpu", "memory")),
                            spec.resource_name is None, spec.pod_resources.cpu, spec.pod_resources.memory_gi_b)


@lru_cache(maxsize=4096)  # a fleet has few distinct Node shapes; the operator counts them on every plan
def _devices_offered(count: str, cpu: str, memory: str, per_node: bool, cpu_per_device: float,
                     memory_gib_per_device: float) -> int:
    if per_node:
        devices = 1
    else:
        raw = parse_quantity(count)
        devices = int(raw) if raw is not None and raw >= 0 and raw.is_integer() else 0  # absent or not a count
    memory_bytes = parse_quantity(memory)
    host_fits = PodResources(cpu=cpu_per_device, memoryGiB=memory_gib_per_device).devices_fitting(
        parse_quantity(cpu), None if memory_bytes is None else memory_bytes / 2**30)
    return devices if host_fits is None else min(devices, host_fits)


def _schedulable(node: Mapping[str, Any]) -> bool:
    spec = node.get("spec") or {}
    return not (isinstance(spec, dict) and spec.get("unschedulable"))


def devices_from_nodes(hardware_classes: Iterable[HardwareClass], nodes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Devices per HardwareClass, counted from Node objects (dicts as the API server returns them).

    A Node belongs to a class when its labels match the class's nodeSelector (default
    ``tessera.dev/hardware-class=<class>``); cordoned Nodes (spec.unschedulable) count for nothing.
    """
    return {name: sum(on_nodes) for name, on_nodes in devices_per_node(hardware_classes, nodes).items()}


def devices_per_node(hardware_classes: Iterable[HardwareClass], nodes: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Per HardwareClass, the devices each of its schedulable Nodes offers (see ``devices_from_nodes``)."""
    classes = list(hardware_classes)
    counts: dict[str, list[int]] = {cls.metadata.name: [] for cls in classes}
    for node in nodes:
        if not _schedulable(node):
            continue
        labels = _labels(node)
        for cls in classes:
            if _matches(labels, cls.selector()):
                counts[cls.metadata.name].append(_device_count(node, cls.spec))
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
    # per class, the most devices one worker pod may hold: what every Node of the class can serve
    devices_per_pod: dict[str, int] = field(default_factory=dict)

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
        per_node = devices_per_node(hardware_classes, nodes)
        total = {name: sum(counts) for name, counts in per_node.items()}
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
                expected_limit_watts=spec.expected_limit_watts() - held,
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
            devices_per_pod={name: min((n for n in counts if n > 0), default=0) for name, counts in per_node.items()},
        )

    def with_reserved(self, reserved_devices: Mapping[str, int] | None = None,
                      reserved_watts: Mapping[str, float] | None = None) -> "Inventory":
        """This inventory (built with nothing reserved) less what other workflows' plans hold: the same as
        ``build`` with the reservations, without counting the Nodes again."""
        devices, watts = reserved_devices or {}, reserved_watts or {}
        return replace(
            self,
            free_devices={name: max(0, count - int(devices.get(name, 0))) for name, count in self.free_devices.items()},
            power_groups=tuple(replace(g, expected_limit_watts=g.expected_limit_watts - float(watts.get(g.name, 0.0)),
                                       peak_limit_watts=g.peak_limit_watts - float(watts.get(g.name, 0.0)))
                               for g in self.power_groups),
        )

    def replace_devices(self, free_devices: Mapping[str, int]) -> "Inventory":
        """The same inventory with other free-device counts (what-if questions, property tests)."""
        return Inventory(self.classes, dict(free_devices), self.total_devices, self.power_groups, self.model_profiles,
                         self.devices_per_pod)
