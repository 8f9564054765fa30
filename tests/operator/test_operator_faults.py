"""The operator under faults and scarce capacity: crashes between writes, preemption, shrinking power,
invalid inventory, stale metrics, hung API calls. Each test runs the real operator against kmock."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import REGISTRY

from tessera.api import Plan
from tessera.operator.builders import plan_from_child
from tessera_devtools import EmulatedCluster, OperatorRun, wait_for

from .conftest import API, INVENTORY, condition, get_rayservice, get_workflow, phase, wait_status, workflow

L4_ONLY = {"allowedClasses": ["l4", "cpu-epyc"]}  # 8 L4s in the example fleet; this workflow takes 5
L4_DEVICES = 8


def l4_workflow(name: str, **spec) -> dict:
    return workflow(name, slo={"latencyMs": 8000, "requestsPerSecond": 2}, placement=L4_ONLY, **spec)


def settled(body) -> bool:
    return phase(body) in ("Deploying", "Running", "Infeasible")


def children_devices(cluster) -> dict[str, int]:
    """Devices per class that the RayServices in the cluster run (from the plan each carries)."""
    held: dict[str, int] = {}
    for child in cluster.list("ray.io/v1", "rayservices", "default"):
        recorded = plan_from_child(child)
        assert recorded is not None, f"RayService {child['metadata']['name']} carries no plan"
        for cls, n in recorded[0].devices_by_class().items():
            held[cls] = held.get(cls, 0) + n
    return held


class Sampler:
    """Watches the RayServices in a thread and keeps the largest device count per class it ever saw."""

    def __init__(self, cluster):
        self.cluster, self.peak, self._stop = cluster, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for cls, n in children_devices(self.cluster).items():
                self.peak[cls] = max(self.peak.get(cls, 0), n)
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def test_a_crash_between_the_child_and_the_status_never_double_books(cluster):
    """The operator dies after creating w1's RayService, before writing w1's status; w2 wants the same L4s."""
    release = cluster.hold("PATCH", "/agentworkflows/w1/status")  # w1's status write stalls
    first = OperatorRun(cluster).start()
    cluster.create(l4_workflow("w1"))
    child = wait_for(lambda: get_rayservice(cluster, "w1"), what="w1's RayService")
    wait_for(lambda: cluster.requests_matching("PATCH", "/agentworkflows/w1/status"), what="w1's status write")
    first.kill()
    release(drop=True)
    assert not (get_workflow(cluster, "w1").get("status") or {}).get("plan")  # the crash lost w1's status
    cluster.create(l4_workflow("w2"))
    with Sampler(cluster) as sampler, OperatorRun(cluster):
        w1 = wait_status(cluster, "w1", settled)
        w2 = wait_status(cluster, "w2", settled)
        time.sleep(1)  # the settled state holds
        assert sampler.peak.get("l4", 0) <= L4_DEVICES, sampler.peak
    assert phase(w1) == "Deploying" and phase(w2) == "Infeasible"
    assert get_rayservice(cluster, "w1")["spec"] == child["spec"]  # the running cluster was not reshaped
    assert Plan.model_validate(w1["status"]["plan"]).devices_by_class() == plan_from_child(child)[0].devices_by_class()
    assert get_rayservice(cluster, "w2") is None


def test_preemption_by_priority_is_opt_in_and_posts_an_event(cluster):
    cluster.create(l4_workflow("low", priority=0))
    with OperatorRun(cluster):  # the default: first come, first served
        wait_status(cluster, "low", lambda b: phase(b) == "Deploying")
        cluster.create(l4_workflow("high", priority=5))
        assert phase(wait_status(cluster, "high", settled)) == "Infeasible"
    with OperatorRun(cluster, preemption="LowerPriority"):
        cluster.patch(API, "agentworkflows", "high", {"spec": {"slo": {"requestsPerSecond": 2.5}}}, "default")
        wait_status(cluster, "high", lambda b: phase(b) == "Deploying", what="high planned by preemption")
        low = wait_status(cluster, "low", lambda b: phase(b) == "Infeasible", what="low preempted")
        wait_for(lambda: get_rayservice(cluster, "low") is None, what="low's RayService to go")
        assert condition(low, "Planned")["reason"] == "Infeasible"
        events = wait_for(lambda: [e for e in cluster.list("v1", "events", "default")
                                   if e["involvedObject"]["name"] == "low" and e["reason"] == "Preempted"],
                          what="a Preempted Event on low")
        assert "preempted by default/high (priority 5)" in events[0]["message"]


def _plans(cluster, names):
    return {n: {s: (p["hardwareClass"], p["replicas"]) for s, p in get_workflow(cluster, n)["status"]["plan"]["stages"].items()}
            for n in names}


def test_the_same_workflows_get_the_same_plans_whatever_order_they_arrive_in():
    """Four workflows compete for the cheapest classes; created in either order (same timestamp), the same plans."""
    names = [f"w{i}" for i in range(4)]
    plans = []
    for order in (1, -1):
        with EmulatedCluster(nodes=EmulatedCluster.example_nodes()) as cluster:
            cluster.apply_files(*INVENTORY)
            for name in names[::order]:
                body = workflow(name, slo={"latencyMs": 8000, "requestsPerSecond": 6},
                                placement={"allowedClasses": ["a6000", "l40s", "a100-80gb", "cpu-epyc"]})
                body["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
                cluster.create(body)
            with OperatorRun(cluster):
                for name in names:
                    wait_status(cluster, name, settled)
                plans.append(_plans(cluster, names))
    assert plans[0] == plans[1]
    assert len({str(p) for p in plans[0].values()}) > 1  # they did compete: not all got the same placement


def _metric(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_shrunk_power_budget_warns_waits_tears_down_and_restores_the_plan(cluster):
    with OperatorRun(cluster, power_budget_grace_seconds=3):
        cluster.create(workflow("qa"))
        before = wait_status(cluster, "qa", lambda b: phase(b) == "Deploying")
        budget = wait_for(lambda: condition(cluster.get(API, "powerbudgets", "gpu-rows"), "WithinBudget"),
                          what="the budget's WithinBudget condition")
        assert budget["status"] == "True"
        cluster.patch(API, "powerbudgets", "gpu-rows", {"spec": {"provisionedWatts": 1, "oversubscriptionPercent": 0}})
        over = wait_for(lambda: (c := condition(cluster.get(API, "powerbudgets", "gpu-rows"), "WithinBudget"))
                        and c["status"] == "False" and c, what="WithinBudget False")
        assert over["reason"] == "OverBudget" and "over the 1 W allowed" in over["message"]
        assert " 0.0 kW" not in over["message"]
        events = lambda name, reason: [e for e in cluster.list("v1", "events", "default")
                                       if e["involvedObject"]["name"] == name and e["reason"] == reason]
        wait_for(lambda: events("gpu-rows", "OverBudget"), what="an OverBudget Event on the budget")
        wait_for(lambda: events("qa", "OverPowerBudget"), what="an OverPowerBudget Event on the workflow")
        assert get_rayservice(cluster, "qa") is not None  # the grace period: still running
        torn = wait_status(cluster, "qa", lambda b: phase(b) == "Infeasible", timeout=20, what="torn down after grace")
        assert condition(torn, "Planned")["reason"] == "Infeasible" and " 0.0 kW" not in torn["status"]["message"]
        wait_for(lambda: get_rayservice(cluster, "qa") is None, what="the RayService to go")
        cluster.patch(API, "powerbudgets", "gpu-rows", {"spec": {"provisionedWatts": 40000, "oversubscriptionPercent": 30}})
        back = wait_status(cluster, "qa", lambda b: phase(b) == "Deploying", what="the plan back")
        assert back["status"]["plan"]["stages"] == before["status"]["plan"]["stages"]


def test_invalid_inventory_gets_a_condition_and_is_named_in_the_workflow(cluster):
    bad = cluster.get(API, "hardwareclasses", "l4")
    bad = {"apiVersion": API, "kind": "HardwareClass", "metadata": {"name": "l4-broken"},
           "spec": {**bad["spec"], "tdpWatts": -5}}
    cluster.create(bad)  # the emulator does not validate: as if the CRD's schema were bypassed
    with OperatorRun(cluster):
        valid = wait_for(lambda: condition(cluster.get(API, "hardwareclasses", "l4-broken"), "Valid"),
                         what="the class's Valid condition")
        assert valid["status"] == "False" and valid["reason"] == "InvalidSpec" and "spec.tdpWatts" in valid["message"]
        assert condition(cluster.get(API, "hardwareclasses", "l4"), "Valid")["status"] == "True"
        cluster.create(workflow("pinned", placement={"allowedClasses": ["l4-broken"]}))
        body = wait_status(cluster, "pinned", lambda b: phase(b) == "Infeasible")
        assert "HardwareClass l4-broken is invalid: spec.tdpWatts" in body["status"]["message"]


def _outcome(cluster, name):
    body = get_workflow(cluster, name)
    return phase(body), body["status"].get("message"), bool(get_rayservice(cluster, name))


def test_an_invalid_edit_is_handled_the_same_with_or_without_a_restart(cluster):
    cluster.create(l4_workflow("qa"))
    with OperatorRun(cluster):
        wait_status(cluster, "qa", lambda b: phase(b) == "Deploying")
        cluster.patch(API, "hardwareclasses", "l4", {"spec": {"tdpWatts": -5}})
        wait_status(cluster, "qa", lambda b: phase(b) == "Infeasible", what="qa moved off the invalid class")
        running = _outcome(cluster, "qa")
    with OperatorRun(cluster):
        time.sleep(2)  # what a restarted operator does with the same objects
        assert _outcome(cluster, "qa") == running
    assert "HardwareClass l4 is invalid" in running[1]


def test_budget_metrics_and_plan_change_series_go_with_the_workflows(cluster):
    with OperatorRun(cluster):
        cluster.create(workflow("metered"))
        wait_status(cluster, "metered", lambda b: phase(b) == "Deploying")
        assert _metric("tessera_power_budget_planned_watts", budget="gpu-rows") > 0
        assert _metric("tessera_workflow_plan_changes_total", namespace="default", workflow="metered") is not None
        cluster.delete(API, "agentworkflows", "metered", "default")
        wait_for(lambda: _metric("tessera_power_budget_planned_watts", budget="gpu-rows") == 0,
                 what="planned watts back to 0")
        assert _metric("tessera_workflow_plan_changes_total", namespace="default", workflow="metered") is None


def test_a_hung_api_call_times_out_and_backs_off_without_blocking_other_workflows(cluster):
    release = cluster.hold("GET", "/rayservices/stuck")  # reading stuck's child hangs
    try:
        with OperatorRun(cluster, api_timeout_seconds=0.5) as run:
            cluster.create(workflow("stuck"))
            cluster.create(workflow("free"))
            wait_status(cluster, "free", lambda b: phase(b) == "Deploying")
            wait_for(lambda: cluster.requests_matching("GET", "/rayservices/stuck") >= 2, what="a retry of stuck")
            assert run.state.latencies.maxlen is not None and run.state.queued_seconds.maxlen is not None
    finally:
        release()
