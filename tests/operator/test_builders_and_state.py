"""Pure parts of the operator: builders, the capacity ledger, status patches, settings, the webhook's words."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tessera.api import AgentWorkflow, HardwareClass, Plan, SpeculativeDecoding, StagePlan, parse_resource
from tessera.api.serve import StageDeployment, WorkflowAppArgs
from tessera.cli.documents import load
from tessera.operator.builders import (
    build_rayservice, build_worker_group, child_name, plan_from_child,
)
from tessera.operator.inventory import Holding, reserved_by_others, still_fits
from tessera.operator.reconcile import status_patch
from tessera.operator.settings import OperatorSettings
from tessera.operator.webhook import admission_problems
from tessera_devtools import EXAMPLES

from .conftest import workflow

CLASSES = {hc.metadata.name: hc for hc in load([str(EXAMPLES / "inventory")]).of_kind(HardwareClass)}


def stage(cls: str, replicas: int = 1, tp: int = 1, draft: str | None = None) -> StagePlan:
    return StagePlan(hardware_class=cls, replicas=replicas, tensor_parallel=tp, predicted_latency_ms=10, watts=100,
                     usd_per_hour=1, draft_hardware_class=draft)


def plan(**stages: StagePlan) -> Plan:
    return Plan(feasible=True, objective="tco", stages=stages)


def parsed(body) -> AgentWorkflow:
    body = json.loads(json.dumps(body))
    body["metadata"]["uid"] = "uid-1"
    return parse_resource(body)


@pytest.mark.parametrize("stages, expected", [
    ({"a": stage("h100-sxm", replicas=3)}, {"h100-sxm": 3}),
    ({"a": stage("h100-sxm", replicas=2, tp=4)}, {"h100-sxm": 8}),
    ({"a": stage("h100-sxm", 2), "b": stage("h100-sxm", 1)}, {"h100-sxm": 3}),
    ({"a": stage("a100-80gb", 2, draft="l4")}, {"a100-80gb": 2, "l4": 2}),
    ({"a": stage("a100-80gb", 2, draft="a100-80gb")}, {"a100-80gb": 2}),
])
def test_devices_held_by_a_plan(stages, expected):
    assert plan(**stages).devices_by_class() == expected


@pytest.mark.parametrize("cls, devices, pods, per_pod, resource", [
    ("h100-sxm", 3, 1, 3, "nvidia.com/gpu"),
    ("h100-sxm", 8, 1, 8, "nvidia.com/gpu"),
    ("h100-sxm", 12, 2, 8, "nvidia.com/gpu"),
    ("l40s", 9, 3, 4, "nvidia.com/gpu"),
    ("mi300x", 2, 1, 2, "amd.com/gpu"),
    ("cpu-epyc", 3, 3, 1, None),
])
def test_worker_group_pods_requests_and_ray_resources(cls, devices, pods, per_pod, resource):
    hc = CLASSES[cls]
    group = build_worker_group(hc, devices, "img", {"l": "v"})
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (pods, pods, pods)
    container = group["template"]["spec"]["containers"][0]
    requests = container["resources"]["requests"]
    assert requests.get(resource) == (str(per_pod) if resource else None)
    assert float(requests["cpu"]) == hc.spec.pod_resources.cpu * per_pod
    # KubeRay's custom-resource format: a JSON object inside a quoted string.
    assert group["rayStartParams"]["resources"] == '"{\\"tessera.dev/' + cls + '\\": ' + str(per_pod) + '}"'
    assert json.loads(json.loads(group["rayStartParams"]["resources"])) == {f"tessera.dev/{cls}": per_pod}
    assert group["template"]["spec"]["nodeSelector"] == {"tessera.dev/hardware-class": cls}
    tolerations = group["template"]["spec"].get("tolerations", [])
    assert [t["key"] for t in tolerations] == [t.key for t in hc.spec.tolerations]


def test_rayservice_serve_config_carries_the_plan_and_the_user_args():
    wf = parsed(workflow("qa", priority=3, serve={"args": {"policy": "wb-urgency"}, "image": "my/img:1"}))
    p = plan(answer=stage("l40s", replicas=2), **{"file-ticket": stage("cpu-epyc")})
    child = build_rayservice(wf, p, CLASSES, OperatorSettings())
    models, app = yaml.safe_load(child["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == wf.spec.serve.import_path == "tessera.workers.runtime.app:build_app"
    # the llm stage's model deployment is an application of its own, at the workflow's OpenAI route
    assert (models["name"], models["route_prefix"], models["import_path"]) == (
        "qa-models", "/qa/v1", "tessera.workers.runtime.models:build_models_app")
    assert models["args"] == app["args"]
    args = WorkflowAppArgs.model_validate(app["args"])  # what the workers' builder validates
    assert args.spec == wf.spec and args.spec.serve.args == {"policy": "wb-urgency"} and args.spec.priority == 3
    assert (args.workflow, args.namespace) == ("qa", "default")
    assert args.deployments["answer"] == StageDeployment(
        hardware_class="l40s", replicas=2, ray_actor_options={"num_cpus": 1, "num_gpus": 1, "resources": {"tessera.dev/l40s": 1}},
        usd_per_hour=0.5, watts=50.0,  # per replica: the stage's $1/h and 100 W over 2 replicas
        predicted_latency_ms=p.stages["answer"].predicted_latency_ms, max_ongoing_requests=p.stages["answer"].batch_size,
        model_deployment="llama-3-1-8b@l40s")  # the shared model deployment (operator/models.py)
    assert args.deployments["file-ticket"].ray_actor_options["num_gpus"] == 0
    cluster = child["spec"]["rayClusterConfig"]
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["cpu-epyc", "l40s"]
    images = {c["image"] for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]}
    assert images == {"my/img:1"}
    for group in cluster["workerGroupSpecs"]:  # replicas write metrics into a shared folder, a sidecar serves it
        worker, exporter = group["template"]["spec"]["containers"]
        assert {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/tessera-metrics"} in worker["env"]
        assert {"name": "TESSERA_HARDWARE_CLASS", "value": group["groupName"]} in worker["env"]
        assert exporter["command"][:3] == ["python", "-m", "tessera.workers.metrics"]
        assert exporter["ports"] == [{"containerPort": 9100, "name": "metrics"}]
        assert worker["volumeMounts"] == exporter["volumeMounts"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert child["metadata"]["labels"]["tessera.dev/workflow"] == "qa"


def test_speculative_decoding_and_draft_class_travel_to_the_workers():
    wf = parsed(workflow("qa"))
    wf.spec.stages[0].speculative_decoding = SpeculativeDecoding(method="ngram", draft_length=3)
    child = build_rayservice(wf, plan(answer=stage("h100-sxm", draft="l4"), **{"file-ticket": stage("cpu-epyc")}),
                             CLASSES, OperatorSettings())
    args = WorkflowAppArgs.model_validate(yaml.safe_load(child["spec"]["serveConfigV2"])["applications"][0]["args"])
    stages = {stage.name: stage for stage in args.spec.stages}
    assert stages["answer"].speculative_decoding == SpeculativeDecoding(method="ngram", draft_length=3)
    assert args.deployments["answer"].draft_hardware_class == "l4"
    assert stages["file-ticket"].speculative_decoding is None


def test_child_names_stay_short_and_distinct():
    long_a, long_b = "a" * 60 + "-x", "a" * 60 + "-y"
    assert child_name("qa") == "qa"
    assert len(child_name(long_a)) <= 50 and child_name(long_a) != child_name(long_b)


def H(devices, priority=0, created="2026-01-01T00:00:00Z", watts=None):
    return Holding(devices=devices, watts=watts or {}, priority=priority, created=created)


@pytest.mark.parametrize("holdings, total, key, fits", [
    ({"a": H({"x": 4}), "b": H({"x": 4})}, {"x": 8}, "b", True),
    ({"a": H({"x": 4}), "b": H({"x": 4})}, {"x": 6}, "a", True),  # older keeps its devices
    ({"a": H({"x": 4}), "b": H({"x": 4}, created="2026-01-02T00:00:00Z")}, {"x": 6}, "b", False),
    ({"a": H({"x": 4}), "b": H({"x": 4}, priority=5, created="2026-01-02T00:00:00Z")}, {"x": 6}, "a", False),
    ({"a": H({"x": 4}), "b": H({"x": 4}, priority=5, created="2026-01-02T00:00:00Z")}, {"x": 6}, "b", True),
    ({"a": H({"x": 2})}, {}, "a", False),  # the class lost all its nodes
])
def test_who_keeps_devices_when_capacity_shrinks(holdings, total, key, fits):
    assert (not still_fits(key, holdings, total, {})) is fits


def test_watts_count_against_power_budgets():
    holdings = {"a": H({}, watts={"rows": 700}), "b": H({}, watts={"rows": 400}, created="2026-02-01T00:00:00Z")}
    assert not still_fits("a", holdings, {}, {"rows": 1000})
    short = still_fits("b", holdings, {}, {"rows": 1000})
    assert not short.devices and short.power == ["PowerBudget rows: the plan expects 400 W, 300 W left for it"]


def test_reserved_by_others_excludes_self():
    holdings = {"a": H({"x": 2}, watts={"p": 10}), "b": H({"x": 3, "y": 1}, watts={"p": 5})}
    assert reserved_by_others("a", holdings) == ({"x": 3, "y": 1}, {"p": 5})


@pytest.mark.parametrize("actual, desired, patch", [
    ({"phase": "Planned"}, {"phase": "Planned"}, {}),
    (None, {"phase": "Planned"}, {"phase": "Planned"}),
    ({"phase": "Planned", "plan": {"a": 1}}, {"phase": "Invalid"}, {"phase": "Invalid", "plan": None}),
    ({"plan": {"stages": {"a": 1, "b": 2}}}, {"plan": {"stages": {"a": 1}}}, {"plan": {"stages": {"b": None}}}),
    ({"conditions": [1, 2]}, {"conditions": [1]}, {"conditions": [1]}),
])
def test_status_is_patched_only_where_it_changed(actual, desired, patch):
    assert status_patch(actual, desired) == patch


def test_settings_from_the_environment():
    env = {"TESSERA_NAMESPACES": "a, b", "TESSERA_METRICS_PORT": "9100", "TESSERA_DEV": "true"}
    settings = OperatorSettings.from_env(env)
    assert settings.namespaces == ["a", "b"] and settings.metrics_port == 9100 and settings.dev
    assert OperatorSettings.from_env(env, namespaces=[]).namespaces == []
    with pytest.raises(ValueError, match="^TESSERA_METRICS_PORT: "):
        OperatorSettings.from_env({"TESSERA_METRICS_PORT": "many"})


def test_the_webhook_rejects_with_the_words_of_tessera_validate(tmp_path):
    bad = workflow("broken")
    bad["spec"]["stages"][1]["dependsOn"] = ["nowhere"]
    bad["spec"]["slo"]["deadlineMs"] = 10
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(bad))
    lines = load([str(file)]).problems  # what `tessera validate` prints, one line per problem
    message = admission_problems(bad)
    assert message.startswith("AgentWorkflow/broken: ")
    for line in lines:
        assert line.split(": AgentWorkflow/broken: ", 1)[1] in message
    assert admission_problems(workflow("fine")) is None


def test_bench_operator_names_what_it_needs_without_the_harness(tmp_path):
    """Outside a checkout (no tests/support, no tessera_devtools on the path): one line, exit code 2."""
    import subprocess
    import sys

    code = ("import pathlib, tessera.operator.bench as bench; "
            "bench.SUPPORT = pathlib.Path('/nonexistent/tests/support'); bench.devtools()")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tests/support" in lines[0] and "kmock" in lines[0], result.stderr


def test_worker_pods_fit_the_nodes_allocatable_cpu_and_memory():
    """podResources are per device: a class asking 200 GiB a device gets 7-device pods on 1536 GiB Nodes."""
    from tessera.api import PowerBudget, ModelProfile
    from tessera.planner import Inventory
    from tessera.planner.inventory import parse_quantity
    from tessera_devtools import EmulatedCluster

    docs = load([str(EXAMPLES / "inventory")])
    hungry = CLASSES["h100-sxm"].model_copy(deep=True)
    hungry.spec.pod_resources.memory_gi_b = 200
    classes = {**CLASSES, "h100-sxm": hungry}
    nodes = EmulatedCluster.example_nodes()
    inventory = Inventory.build(classes.values(), nodes, docs.of_kind(PowerBudget), docs.of_kind(ModelProfile))
    assert inventory.total_devices["h100-sxm"] == 7 and inventory.devices_per_pod["h100-sxm"] == 7
    wf = parsed(workflow("qa"))
    child = build_rayservice(wf, plan(answer=stage("h100-sxm", replicas=7)), classes, OperatorSettings(),
                             inventory.devices_per_pod)
    (group,) = [g for g in child["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "h100-sxm"]
    node = next(n for n in nodes if n["metadata"]["labels"]["tessera.dev/hardware-class"] == "h100-sxm")
    requests = [c["resources"]["requests"] for c in group["template"]["spec"]["containers"]]
    for resource in ("memory", "cpu"):
        pod = sum(parse_quantity(r[resource]) for r in requests)
        assert pod <= parse_quantity(node["status"]["allocatable"][resource]), resource
    assert group["replicas"] == 1


def test_the_plan_rides_on_the_child_and_reads_back():
    wf = parsed(workflow("qa"))
    wf.metadata.generation = 3
    p = plan(answer=stage("l40s", replicas=2))
    child = build_rayservice(wf, p, CLASSES, OperatorSettings())
    recovered, generation = plan_from_child(child)
    assert generation == 3 and recovered.devices_by_class() == {"l40s": 2}
    assert plan_from_child({"metadata": {"annotations": {"tessera.dev/plan": "{not json"}}}) is None


def test_retries_back_off_exponentially_to_a_ceiling():
    from tessera.operator.handlers import backoff_seconds

    assert [backoff_seconds(n, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_the_metrics_port_differs_from_kopfs_liveness_port():
    """The image runs `kopf run ... --liveness=http://0.0.0.0:8080/healthz`: /metrics must not take 8080."""
    assert OperatorSettings().metrics_port not in (0, 8080)


def test_watts_read_as_people_write_them():
    from tessera.api.common import format_watts

    assert [format_watts(w) for w in (0, 1, 300, 999.4, 1500, 52_000, 400_000, 2_500_000)] == [
        "0 W", "1 W", "300 W", "999 W", "1.5 kW", "52 kW", "400 kW", "2.5 MW"]


@pytest.mark.asyncio
async def test_the_planner_turn_goes_to_the_best_ranked_waiter():
    import asyncio

    from tessera.operator.handlers import PlanTurns

    turns, order = PlanTurns(), []

    async def plan(rank):
        async with turns.turn(rank):
            order.append(rank)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(plan(r) for r in (3, 1, 2, 0)))
    assert order == [0, 1, 2, 3]
