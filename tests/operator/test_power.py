"""The power controller: its pure parts, then the real operator on the emulated cluster holding an
oversubscribed PowerBudget with real node agents (over a fake NVML) reading and applying the caps."""

from __future__ import annotations

import pytest

from tessera.api import HardwareClass, PowerBudget
from tessera.api.power import DevicePower, NodePowerReadings
from tessera.operator.metrics import operator_metrics
from tessera.operator.power import (
    GroupState, group_devices, in_group, may_act, node_priorities, status_patch, step,
)
from tessera.planner.capping import Controller, Level, Thresholds
from tessera_devtools import wait_for
from tessera_devtools.power import AgentThread, FakeNvml

from .conftest import API, workflow

HIGH_NODE, LOW_NODE = "h100-sxm-node-0", "h200-node-0"


def power_budget(name="rack", provisioned=2000.0) -> dict:
    """Two nodes' four devices (one H100 node, one H200 node) on 2,000 W, with short delays for the test."""
    return {"apiVersion": API, "kind": "PowerBudget", "metadata": {"name": name}, "spec": {
        "hardwareClasses": ["h100-sxm", "h200"], "provisionedWatts": provisioned, "oversubscriptionPercent": 30,
        "capping": {"decisionDelaySeconds": 0.5, "minCapSeconds": 2},
    }}


def hc(name: str) -> HardwareClass:
    return HardwareClass.model_validate({"metadata": {"name": name}, "spec": {
        "vendor": "NVIDIA", "generation": name, "peakTflops": {"bf16": 989}, "memoryGiB": 80,
        "memoryBandwidthGBps": 3350, "tdpWatts": 700, "idleWatts": 140, "usdPerHour": 3}})


@pytest.mark.parametrize("labels,expected", [
    ({"tessera.dev/hardware-class": "h200"}, True),
    ({"tessera.dev/hardware-class": "l40s"}, False),
    ({}, False),
])
def test_a_node_is_in_the_group_by_its_class(labels, expected):
    budget = PowerBudget.model_validate(power_budget())
    assert in_group(labels, budget, {"h100-sxm": hc("h100-sxm"), "h200": hc("h200")}) is expected


def test_a_device_takes_the_highest_priority_of_the_workflows_on_its_node():
    pods = [("n1", "default", "batch"), ("n1", "default", "chat"), ("n2", "default", "batch"), ("n3", "x", "gone")]
    assert node_priorities(pods, {"default/batch": 0, "default/chat": 5}) == {"n1": 5, "n2": 0}


def readings(node: str, *watts: float) -> NodePowerReadings:
    return NodePowerReadings(node=node, vendor="nvidia", time="2026-11-28T08:00:00+00:00", devices=[
        DevicePower(index=i, uuid=f"{node}-{i}", power_watts=w, limit_watts=700, default_limit_watts=700,
                    min_limit_watts=200, max_limit_watts=700) for i, w in enumerate(watts)])


def test_one_tick_caps_the_low_priority_node_first_and_writes_the_status():
    devices, draw = group_devices([readings("hi", 450, 450), readings("lo", 450, 450)], {"hi": 5, "lo": 0})
    assert draw == 1800
    state = GroupState(Controller(Thresholds(2000, delay_s=0.5)))
    assert step(state, 0.0, draw, devices) == (False, [])  # crossed T1: decides after the delay
    changed, caps = step(state, 0.5, draw, devices)
    assert changed and [c.device for c in caps] == ["lo/0", "lo/1"] and caps[0].watts == pytest.approx(490)
    assert status_patch(state, draw, caps) == {
        "drawWatts": 1800, "capLevel": "low", "lastOverBudgetTime": None,
        "caps": [{"device": "lo/0", "watts": 490}, {"device": "lo/1", "watts": 490}]}
    step(state, 1.0, 2100, devices)
    assert state.last_over == "1970-01-01T00:00:01+00:00"


@pytest.mark.parametrize("level,draw,complete,acts", [
    (Level.LOW, 1000, True, True),  # every agent answered: lift as the policy says
    (Level.LOW, 1000, False, False),  # one agent silent: its devices still draw, no lift
    (Level.LOW, 1950, False, True),  # ... but a partial reading may still raise the level
    (Level.NONE, 1000, False, True),
])
def test_a_partial_reading_never_lifts_a_cap(level, draw, complete, acts):
    state = GroupState(Controller(Thresholds(2000)))
    state.controller.level = level
    assert may_act(state, draw, complete) is acts


def worker_pod(name: str, node: str, workflow_name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"tessera.dev/workflow": workflow_name}},
            "spec": {"nodeName": node, "containers": [{"name": "ray-worker", "image": "tessera"}]}}


def test_an_oversubscribed_budget_is_held_by_caps_on_the_least_urgent_node_first(cluster, operator):
    high, low = FakeNvml([450, 450]), FakeNvml([450, 450])  # 1,800 W: above T1 (1,700 W), below T2 (1,900 W)
    agents = [AgentThread(cluster, HIGH_NODE, high), AgentThread(cluster, LOW_NODE, low)]
    try:
        cluster.create(workflow("chat", priority=5))
        cluster.create(workflow("batch", priority=0))
        cluster.create(worker_pod("chat-worker", HIGH_NODE, "chat"))
        cluster.create(worker_pod("batch-worker", LOW_NODE, "batch"))
        cluster.create(power_budget())

        def status():
            return (cluster.get(API, "powerbudgets", "rack") or {}).get("status") or {}

        capped = wait_for(lambda: status().get("caps") and status(), timeout=30, what="caps in the status")
        assert capped["capLevel"] == "low"
        assert [c["device"] for c in capped["caps"]] == [f"{LOW_NODE}/0", f"{LOW_NODE}/1"]  # batch's node, not chat's
        wait_for(lambda: low.set_calls, timeout=10, what="the low node's agent applying its caps")
        assert low.set_calls[:2] == [(0, 490_000), (1, 490_000)] and high.set_calls == []

        high.uncapped = low.uncapped = [350, 350]  # 1,400 W: under T1 - margin: the caps lift after the hold
        try:
            wait_for(lambda: status().get("capLevel") == "none" and not status().get("caps"), timeout=30, what="lift")
        except TimeoutError:
            raise AssertionError(f"no lift: {status()}") from None
        wait_for(lambda: low.limits == [700_000, 700_000], timeout=10, what="defaults restored")
        events = [e for e in cluster.list("v1", "events", "default") + cluster.list("v1", "events")
                  if (e.get("involvedObject") or {}).get("name") == "rack"]
        assert {e["reason"] for e in events} >= {"PowerCapped", "PowerUncapped"}
        assert status()["drawWatts"] == pytest.approx(1400)
        metrics = operator_metrics()
        assert metrics.cap_changes.labels(budget="rack", direction="cap")._value.get() >= 1
        assert metrics.cap_changes.labels(budget="rack", direction="lift")._value.get() >= 1
        assert metrics.group_watts.labels(budget="rack")._value.get() == pytest.approx(1400)
    finally:
        for agent in agents:
            agent.close()
