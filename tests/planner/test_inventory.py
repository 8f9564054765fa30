"""Devices per class counted from Node objects; other plans' reservations taken off."""

from __future__ import annotations

from tessera.api import HardwareClass
from tessera.planner import Inventory, devices_from_nodes


def hardware_class(name: str, resource: str | None = "nvidia.com/gpu", selector: dict | None = None) -> HardwareClass:
    return HardwareClass.model_validate({
        "metadata": {"name": name},
        "spec": {"vendor": "V", "generation": "G", "peakTflops": {"bf16": 100}, "memoryGiB": 80,
                 "memoryBandwidthGBps": 1000, "tdpWatts": 500, "idleWatts": 100, "usdPerHour": 2,
                 "resourceName": resource, "nodeSelector": selector or {}},
    })


def node(name: str, labels: dict, allocatable: dict, unschedulable: bool = False) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": unschedulable}, "status": {"allocatable": allocatable}}


def test_counts_follow_labels_resources_and_cordons():
    classes = [hardware_class("gpu-a"), hardware_class("cpu", resource=None),
               hardware_class("gaudi", resource="habana.ai/gaudi", selector={"pool": "gaudi"})]
    nodes = [
        node("a0", {"tessera.dev/hardware-class": "gpu-a"}, {"nvidia.com/gpu": "8"}),
        node("a1", {"tessera.dev/hardware-class": "gpu-a"}, {"nvidia.com/gpu": "4"}),
        node("a2", {"tessera.dev/hardware-class": "gpu-a"}, {"nvidia.com/gpu": "8"}, unschedulable=True),
        node("a3", {"tessera.dev/hardware-class": "gpu-a"}, {"nvidia.com/gpu": "lots"}),  # not a count
        node("c0", {"tessera.dev/hardware-class": "cpu"}, {"cpu": "96"}),
        node("c1", {"tessera.dev/hardware-class": "cpu"}, {"cpu": "96"}),
        node("g0", {"pool": "gaudi"}, {"habana.ai/gaudi": "8"}),
        node("x0", {}, {"nvidia.com/gpu": "8"}),  # unlabelled: no class
    ]
    assert devices_from_nodes(classes, nodes) == {"gpu-a": 12, "cpu": 2, "gaudi": 8}


def test_reserved_devices_and_watts_come_off(inventory):
    from tessera.planner.synthetic import example_inventory

    reserved = example_inventory(reserved_devices={"h200": 3}, reserved_watts={"gpu-rows": 2000})
    assert inventory.free_devices["h200"] == 8
    assert reserved.free_devices["h200"] == 5
    full, held = inventory.power_groups[0], reserved.power_groups[0]
    assert full.expected_limit_watts == 40000 * 1.3
    assert held.expected_limit_watts == 40000 * 1.3 - 2000
    assert held.peak_limit_watts == 40000 - 2000


def test_examples_inventory(inventory):
    assert inventory.total_devices == {"a100-80gb": 16, "h100-sxm": 8, "h200": 8, "l40s": 8, "a6000": 8, "l4": 8,
                                       "mi300x": 8, "gaudi3": 8, "cpu-epyc": 4}
    assert isinstance(inventory, Inventory) and "llama-3-1-70b" in inventory.model_profiles


def test_host_cpu_and_memory_limit_the_devices_a_node_offers():
    """podResources are per device: a Node counts only the devices its allocatable CPU and memory can serve."""
    cls = HardwareClass.model_validate({**hardware_class("big").model_dump(by_alias=True),
                                        "spec": {**hardware_class("big").spec.to_wire(),
                                                 "podResources": {"cpu": 16, "memoryGiB": 200}}})
    label = {"tessera.dev/hardware-class": "big"}
    nodes = [
        node("roomy", label, {"nvidia.com/gpu": "8", "cpu": "192", "memory": "2Ti"}),
        node("tight", label, {"nvidia.com/gpu": "8", "cpu": "192", "memory": "1536Gi"}),  # 7 x 200 GiB fit
        node("few-cpus", label, {"nvidia.com/gpu": "8", "cpu": "48500m", "memory": "2Ti"}),  # 3 x 16 cores
        node("unknown", label, {"nvidia.com/gpu": "8"}),  # reports neither: its devices count
    ]
    inventory = Inventory.build([cls], nodes)
    assert inventory.total_devices == {"big": 8 + 7 + 3 + 8}
    assert inventory.devices_per_pod == {"big": 3}  # a worker pod that fits on every Node of the class


def test_reserving_on_a_built_inventory_equals_building_with_the_reservations():
    from tessera.api import PowerBudget

    classes = [hardware_class("gpu-a"), hardware_class("cpu", resource=None)]
    nodes = [node("a0", {"tessera.dev/hardware-class": "gpu-a"}, {"nvidia.com/gpu": "8"}),
             node("c0", {"tessera.dev/hardware-class": "cpu"}, {"cpu": "96"})]
    budgets = [PowerBudget.model_validate({"metadata": {"name": "rows"},
                                           "spec": {"provisionedWatts": 4000, "oversubscriptionPercent": 25}})]
    reserved = ({"gpu-a": 3}, {"rows": 500.0})
    assert Inventory.build(classes, nodes, budgets).with_reserved(*reserved) == Inventory.build(
        classes, nodes, budgets, reserved_devices=reserved[0], reserved_watts=reserved[1])
