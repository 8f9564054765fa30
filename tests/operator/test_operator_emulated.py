"""The real operator against the kmock emulator: create, update, inventory change, invalid, delete, restart."""

from __future__ import annotations

import json
import time

import yaml

from tessera.api import Plan
from tessera_devtools import EmulatedCluster, OperatorRun, wait_for

from .conftest import (
    API, INVENTORY, condition, get_rayservice, get_workflow, phase, wait_status, workflow,
)


def deployed(body):
    return phase(body) in ("Deploying", "Running")


def serve_args(rayservice):
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]


def test_create_writes_plan_conditions_and_a_rayservice(cluster, operator):
    cluster.create(workflow("qa"))
    body = wait_status(cluster, "qa", deployed)
    status = body["status"]
    plan = Plan.model_validate(status["plan"])
    assert plan.feasible and set(plan.stages) == {"answer", "file-ticket"}
    assert status["observedGeneration"] == 1
    for type_ in ("Valid", "Planned", "Deployed"):
        cond = condition(body, type_)
        assert cond["status"] == "True", cond
        assert cond["observedGeneration"] == 1
    assert status["predicted"]["usdPerHour"] > 0

    child = wait_for(lambda: get_rayservice(cluster, "qa"), what="RayService qa")
    owner = child["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("AgentWorkflow", "qa", body["metadata"]["uid"])
    assert child["metadata"]["labels"]["tessera.dev/workflow"] == "qa"
    assert child["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tessera"
    groups = {g["groupName"]: g for g in child["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == set(plan.devices_by_class())
    args = serve_args(child)
    assert (args["workflow"], args["namespace"]) == ("qa", "default")
    for name, stage in plan.stages.items():
        placed = args["deployments"][name]
        assert placed["hardwareClass"] == stage.hardware_class and placed["replicas"] == stage.replicas
        resource = f"tessera.dev/{stage.hardware_class}"
        assert placed["rayActorOptions"]["resources"] == {resource: stage.tensor_parallel}
        advertised = json.loads(json.loads(groups[stage.hardware_class]["rayStartParams"]["resources"]))
        assert resource in advertised


def test_spec_update_bumps_generation_replans_and_updates_the_child(cluster, operator):
    cluster.create(workflow("qa"))
    before = wait_status(cluster, "qa", deployed)
    child_before = wait_for(lambda: get_rayservice(cluster, "qa"))
    cluster.patch(API, "agentworkflows", "qa", {"spec": {"slo": {"requestsPerSecond": 40}}}, "default")
    after = wait_status(cluster, "qa", lambda b: b["status"].get("observedGeneration") == 2 and deployed(b))
    assert after["metadata"]["generation"] == 2
    assert condition(after, "Planned")["observedGeneration"] == 2
    replicas = lambda b: sum(s["replicas"] for s in b["status"]["plan"]["stages"].values())
    assert replicas(after) > replicas(before)
    child = wait_for(lambda: (c := get_rayservice(cluster, "qa")) and serve_args(c) != serve_args(child_before) and c)
    assert serve_args(child)["spec"]["slo"]["requestsPerSecond"] == 40


def test_removing_nodes_replans_the_workflows_using_them(cluster, operator):
    cluster.create(workflow("qa", placement={"allowedClasses": ["a6000", "l40s", "cpu-epyc"]}))
    body = wait_status(cluster, "qa", deployed)
    llm_class = body["status"]["plan"]["stages"]["answer"]["hardwareClass"]
    for node in EmulatedCluster.example_nodes():
        if node["metadata"]["labels"]["tessera.dev/hardware-class"] == llm_class:
            cluster.delete("v1", "nodes", node["metadata"]["name"])
    moved = wait_status(cluster, "qa", lambda b: b["status"]["plan"]["stages"]["answer"]["hardwareClass"] != llm_class,
                        what="a plan without the removed class")
    assert deployed(moved) or phase(moved) == "Infeasible"
    child = get_rayservice(cluster, "qa")
    if deployed(moved):
        groups = {g["groupName"] for g in child["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
        assert llm_class not in groups


def test_an_invalid_workflow_is_marked_while_others_are_reconciled(cluster, operator):
    bad = workflow("broken")
    bad["spec"]["stages"][1]["dependsOn"] = ["nowhere"]
    cluster.create(bad)
    cluster.create(workflow("fine"))
    body = wait_status(cluster, "broken", lambda b: phase(b) == "Invalid")
    valid = condition(body, "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "spec.stages[1].dependsOn[0]: unknown stage 'nowhere'" in valid["message"]
    wait_status(cluster, "fine", deployed)
    assert get_rayservice(cluster, "broken") is None
    events = cluster.list("v1", "events", "default")
    assert any(e["involvedObject"]["name"] == "broken" and e["reason"] == "InvalidSpec" for e in events)


def test_deleting_a_workflow_deletes_its_rayservice(cluster, operator):
    cluster.create(workflow("qa"))
    wait_status(cluster, "qa", deployed)
    wait_for(lambda: get_rayservice(cluster, "qa"))
    cluster.delete(API, "agentworkflows", "qa", "default")
    wait_for(lambda: get_rayservice(cluster, "qa") is None, what="the RayService to go")
    assert get_workflow(cluster, "qa") is None


def test_suspend_removes_the_child_and_keeps_the_plan_dry_run_plans_only(cluster, operator):
    cluster.create(workflow("qa"))
    cluster.create(workflow("rehearsal", dryRun=True))
    planned = wait_status(cluster, "qa", deployed)
    wait_for(lambda: get_rayservice(cluster, "qa"))
    cluster.patch(API, "agentworkflows", "qa", {"spec": {"suspend": True}}, "default")
    suspended = wait_status(cluster, "qa", lambda b: phase(b) == "Suspended")
    assert suspended["status"]["plan"] == planned["status"]["plan"]
    wait_for(lambda: get_rayservice(cluster, "qa") is None, what="the RayService to go")
    cluster.patch(API, "agentworkflows", "qa", {"spec": {"suspend": False}}, "default")
    wait_status(cluster, "qa", deployed)
    wait_for(lambda: get_rayservice(cluster, "qa"), what="the RayService back")

    rehearsal = wait_status(cluster, "rehearsal", lambda b: phase(b) == "Planned")
    assert rehearsal["status"]["plan"]["feasible"]
    assert condition(rehearsal, "Deployed")["reason"] == "DryRun"
    assert get_rayservice(cluster, "rehearsal") is None


def test_a_ready_rayservice_makes_the_workflow_running(cluster, operator):
    cluster.create(workflow("qa"))
    wait_status(cluster, "qa", deployed)
    wait_for(lambda: get_rayservice(cluster, "qa"))
    cluster.patch("ray.io/v1", "rayservices", "qa", {"status": {"serviceStatus": "Running"}}, "default",
                  subresource="status")
    body = wait_status(cluster, "qa", lambda b: phase(b) == "Running")
    assert condition(body, "Ready")["status"] == "True"


def test_workflows_planned_at_once_never_share_devices(cluster, operator):
    """Six workflows on 16 GPUs, created together: the plans hold no more devices than exist."""
    names = [f"w{i}" for i in range(6)]
    for name in names:
        cluster.create(workflow(name, slo={"latencyMs": 8000, "requestsPerSecond": 12},
                                placement={"allowedClasses": ["a6000", "l40s", "cpu-epyc"]}))
    bodies = [wait_status(cluster, n, lambda b: phase(b) in ("Deploying", "Infeasible")) for n in names]
    held: dict[str, int] = {}
    for body in bodies:
        plan = Plan.model_validate(body["status"]["plan"])
        if plan.feasible:
            for cls, n in plan.devices_by_class().items():
                held[cls] = held.get(cls, 0) + n
    assert held, "no workflow was feasible"
    assert held.get("a6000", 0) <= 8 and held.get("l40s", 0) <= 8 and held.get("cpu-epyc", 0) <= 4
    assert any(phase(b) == "Infeasible" for b in bodies) or sum(held.values()) > 8  # the fleet was contended


def _final_state(cluster, name):
    body = get_workflow(cluster, name)
    status = json.loads(json.dumps(body["status"]))
    status["plan"].pop("solveSeconds")
    for cond in status["conditions"]:
        cond.pop("lastTransitionTime")
    child = get_rayservice(cluster, name)
    return status, child["spec"]


def test_an_operator_killed_mid_reconcile_converges_after_restart(cluster):
    with EmulatedCluster(nodes=EmulatedCluster.example_nodes()) as reference:
        reference.apply_files(*INVENTORY)
        reference.create(workflow("qa"))
        with OperatorRun(reference):
            wait_status(reference, "qa", deployed)
            expected = _final_state(reference, "qa")

    release = cluster.hold("POST", "/rayservices")  # the child's creation stalls mid-reconcile
    first = OperatorRun(cluster).start()
    cluster.create(workflow("qa"))
    wait_for(lambda: cluster.requests_matching("POST", "/rayservices"), what="the RayService creation to start")
    first.kill()
    release()
    assert (get_workflow(cluster, "qa").get("status") or {}).get("phase") is None  # killed before any status
    with OperatorRun(cluster):
        wait_status(cluster, "qa", deployed)
        assert _final_state(cluster, "qa") == expected


def test_two_peered_replicas_never_both_act(cluster):
    cluster.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "tessera"}})
    with OperatorRun(cluster, standalone=False, priority=100) as low:
        high = OperatorRun(cluster, standalone=False, priority=200).start()
        peers = lambda: (cluster.get("kopf.dev/v1", "clusterkopfpeerings", "tessera") or {}).get("status") or {}
        wait_for(lambda: len(peers()) == 2, what="both replicas in the peering object")
        time.sleep(1)  # the lower replica sees the higher one and pauses
        cluster.create(workflow("first"))
        wait_status(cluster, "first", deployed)
        assert high.state.latencies and not low.state.latencies  # the higher priority acted alone
        high.stop()  # a clean exit leaves the peering: the other replica takes over
        cluster.create(workflow("second"))
        wait_status(cluster, "second", deployed, timeout=60)
        assert low.state.latencies
