"""Pure builders of what the operator writes: the RayService child, its Serve config, labels, status.

Every function returns plain dicts (the wire format) and touches no API; ``tessera.operator.kube``
sends them. A KubeRay ``RayService`` (``ray.io/v1``) per AgentWorkflow holds a head group and one
worker group per hardware class in the plan; each worker pod advertises the Ray custom resource
``tessera.dev/<class>`` (one unit per device), and each stage's replicas ask for it, so Ray places a
stage only on pods of the class the planner chose.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping

import yaml

from tessera.api import API_VERSION, AgentWorkflow, HardwareClass, Plan, Stage, StagePlan
from tessera.api.serve import (
    HARDWARE_CLASS_ENV,
    WORKER_METRICS_DIR,
    WORKER_METRICS_PORT,
    StageDeployment,
    WorkflowAppArgs,
    build_applications,
    ray_resource,
)
from tessera.api.hardware import WORKER_POD_OVERHEAD_CPU, WORKER_POD_OVERHEAD_MEMORY_GIB
from tessera.api.model_profile import ModelProfile
from tessera.operator.models import (
    build_llm_application,
    build_model_deployments,
    device_actor_options,
    llm_application_name,
)
from tessera.operator.settings import OperatorSettings

RAYSERVICE_API_VERSION = "ray.io/v1"
WORKFLOW_LABEL = "tessera.dev/workflow"
PLAN_ANNOTATION = "tessera.dev/plan"
PLAN_GENERATION_ANNOTATION = "tessera.dev/plan-generation"
# Head and worker pods: never root (the images set a numeric user), no privilege escalation, no capabilities,
# the runtime's seccomp profile, and no API token: Ray never calls the Kubernetes API, and stage code should not.
# (Functions, so that no two objects share a dict: a YAML dump of the child would otherwise carry anchors.)
def pod_hardening() -> dict[str, Any]:
    return {"automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


MAX_CHILD_NAME = 50  # KubeRay derives longer names (<name>-raycluster-xxxxx, <name>-head-svc) from it


def child_name(workflow_name: str) -> str:
    """The RayService's name: the workflow's, shortened with a hash suffix where KubeRay needs it shorter."""
    if len(workflow_name) <= MAX_CHILD_NAME:
        return workflow_name
    digest = hashlib.sha256(workflow_name.encode()).hexdigest()[:8]
    return f"{workflow_name[:MAX_CHILD_NAME - 9].rstrip('-.')}-{digest}"


def build_labels(workflow: AgentWorkflow) -> dict[str, str]:
    name = workflow.metadata.name
    return {
        "app.kubernetes.io/name": "tessera-workflow",
        "app.kubernetes.io/instance": name[:63].rstrip("-."),
        "app.kubernetes.io/component": "ray-serve",
        "app.kubernetes.io/part-of": "tessera",
        "app.kubernetes.io/managed-by": "tessera-operator",
        WORKFLOW_LABEL: name[:63].rstrip("-."),
    }


def build_owner_reference(workflow: AgentWorkflow) -> dict[str, Any]:
    """Makes the RayService a dependent of the workflow, so that deleting the workflow deletes it."""
    return {
        "apiVersion": API_VERSION, "kind": "AgentWorkflow", "name": workflow.metadata.name,
        "uid": workflow.metadata.uid, "controller": True, "blockOwnerDeletion": True,
    }


def build_actor_options(stage: StagePlan, hardware: HardwareClass) -> dict[str, Any]:
    """ray_actor_options of one replica: its devices as GPUs (where Ray counts them) and as the class's resource."""
    return device_actor_options(hardware, stage.tensor_parallel)


def build_stage_args(planned: StagePlan, declared: Stage, classes: dict[str, HardwareClass]) -> StageDeployment:
    """One stage's placement in the application's args, and what each replica costs and draws."""
    deployment = StageDeployment(
        hardware_class=planned.hardware_class,
        replicas=planned.replicas,
        tensor_parallel=planned.tensor_parallel,
        ray_actor_options=build_actor_options(planned, classes[planned.hardware_class]),
        usd_per_hour=planned.usd_per_hour / planned.replicas,
        watts=planned.watts / planned.replicas,
        predicted_latency_ms=planned.predicted_latency_ms,
        draft_hardware_class=planned.draft_hardware_class,
    )
    if declared.kind.value == "llm":  # calls running at once in a replica: the plan's batch
        deployment.max_ongoing_requests = planned.batch_size
    return deployment


def build_serve_config(workflow: AgentWorkflow, plan: Plan, classes: dict[str, HardwareClass],
                       profiles: Mapping[str, ModelProfile] | None = None) -> dict[str, Any]:
    """The Serve applications, each with :class:`WorkflowAppArgs` (the spec and the plan) as args.

    Replicas and actor options travel in ``args.deployments`` rather than in a Serve ``deployments``
    override, because the deployments' names belong to the application builder. The llm stages call
    one model deployment per (model, class) of the plan (``args.models``, operator/models.py), held by
    an application of their own (``build_applications``); those vLLM serves go into a third one, Ray
    Serve LLM's.
    """
    spec = workflow.spec
    declared = {stage.name: stage for stage in spec.stages}
    args = WorkflowAppArgs(
        workflow=workflow.metadata.name,
        namespace=workflow.metadata.namespace,
        spec=spec,
        deployments={name: build_stage_args(stage, declared[name], classes) for name, stage in plan.stages.items()},
    )
    args.models, keys = build_model_deployments(workflow, plan, classes, profiles or {})
    for name, key in keys.items():
        args.deployments[name].model_deployment = key
    llm = build_llm_application(workflow, args.models, keys, classes, profiles or {})
    return {"applications": build_applications(args, spec.serve.import_path) + ([llm] if llm else [])}


def build_head_group(image: str, labels: dict[str, str], settings: OperatorSettings) -> dict[str, Any]:
    resources = {"cpu": settings.head_cpu, "memory": settings.head_memory}
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},  # no stage replicas on the head
        "template": {
            "metadata": {"labels": labels},
            "spec": {**pod_hardening(), "containers": [{
                "name": "ray-head",
                "securityContext": container_security_context(),
                "image": image,
                "resources": {"requests": resources, "limits": resources},
                "ports": [
                    {"containerPort": 6379, "name": "gcs-server"},
                    {"containerPort": 8265, "name": "dashboard"},
                    {"containerPort": 10001, "name": "client"},
                    {"containerPort": 8000, "name": "serve"},
                ],
            }]},
        },
    }


def build_worker_group(hardware: HardwareClass, devices: int, image: str, labels: dict[str, str],
                       devices_per_pod: int | None = None) -> dict[str, Any]:
    """Pods of one class: as many devices per pod as a node has (at most) and as its allocatable CPU and
    memory can serve (``devices_per_pod``, from the Nodes), enough pods for ``devices``."""
    spec = hardware.spec
    name = hardware.metadata.name
    per_pod = max(1, min(devices, spec.devices_per_node, devices_per_pod or spec.devices_per_node))
    pods = math.ceil(devices / per_pod)
    requests: dict[str, Any] = {
        "cpu": _quantity(spec.pod_resources.cpu * per_pod),
        "memory": f"{_quantity(spec.pod_resources.memory_gi_b * per_pod)}Gi",
    }
    if spec.resource_name:
        requests[spec.resource_name] = str(per_pod)
    # KubeRay's format for custom resources: a quoted JSON object inside the string.
    custom = json.dumps({ray_resource(name): per_pod})
    metrics_mount = {"name": "worker-metrics", "mountPath": WORKER_METRICS_DIR}
    pod_spec: dict[str, Any] = {
        **pod_hardening(),
        "containers": [
            {
                "name": "ray-worker",
                "securityContext": container_security_context(),
                "image": image,
                "resources": {"requests": requests, "limits": dict(requests)},
                # Every Serve replica in the pod writes its Prometheus samples here (multiprocess mode) ...
                "env": [{"name": "PROMETHEUS_MULTIPROC_DIR", "value": WORKER_METRICS_DIR},
                        {"name": HARDWARE_CLASS_ENV, "value": name}],  # replicas report it to the router
                "volumeMounts": [metrics_mount],
            },
            {
                # ... and this sidecar serves them all on the port the chart's PodMonitor scrapes.
                "name": "metrics-exporter",
                "securityContext": container_security_context(),
                "image": image,
                "command": ["python", "-m", "tessera.workers.metrics", "--port", str(WORKER_METRICS_PORT),
                            "--dir", WORKER_METRICS_DIR],
                "ports": [{"containerPort": WORKER_METRICS_PORT, "name": "metrics"}],
                "resources": {"requests": {"cpu": f"{WORKER_POD_OVERHEAD_CPU * 1000:g}m",
                                           "memory": f"{WORKER_POD_OVERHEAD_MEMORY_GIB * 1024:g}Mi"},
                              "limits": {"cpu": "200m", "memory": "128Mi"}},
                "volumeMounts": [metrics_mount],
            },
        ],
        "volumes": [{"name": "worker-metrics", "emptyDir": {"sizeLimit": "256Mi"}}],  # ~1 MB a file, a few per process
        "nodeSelector": hardware.selector(),
    }
    if spec.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec.tolerations]
    return {
        "groupName": name,
        "replicas": pods,
        "minReplicas": pods,
        "maxReplicas": pods,
        "rayStartParams": {"resources": '"' + custom.replace('"', '\\"') + '"'},
        "template": {"metadata": {"labels": {**labels, "tessera.dev/hardware-class": name}}, "spec": pod_spec},
    }


def build_rayservice(workflow: AgentWorkflow, plan: Plan, classes: dict[str, HardwareClass],
                     settings: OperatorSettings, devices_per_pod: dict[str, int] | None = None,
                     profiles: Mapping[str, ModelProfile] | None = None) -> dict[str, Any]:
    """The RayService running ``workflow`` as ``plan`` places it; the plan rides along in an annotation, so
    that an operator that restarts before the workflow's status was written knows what the child holds."""
    labels = build_labels(workflow)
    serve_config = build_serve_config(workflow, plan, classes, profiles)
    runs_vllm = any(app["name"] == llm_application_name(workflow.metadata.name) for app in serve_config["applications"])
    image = workflow.spec.serve.image or (settings.vllm_worker_image if runs_vllm else settings.worker_image)
    devices = plan.devices_by_class()
    per_pod = devices_per_pod or {}
    return {
        "apiVersion": RAYSERVICE_API_VERSION,
        "kind": "RayService",
        "metadata": {
            "name": child_name(workflow.metadata.name),
            "namespace": workflow.metadata.namespace,
            "labels": labels,
            "annotations": build_plan_annotations(plan, workflow.metadata.generation),
            "ownerReferences": [build_owner_reference(workflow)],
        },
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": settings.ray_version,
                "headGroupSpec": build_head_group(image, labels, settings),
                "workerGroupSpecs": [
                    build_worker_group(classes[name], count, image, labels, per_pod.get(name))
                    for name, count in sorted(devices.items())
                ],
            },
        },
    }


def build_plan_annotations(plan: Plan, generation: int | None) -> dict[str, str]:
    """The plan a child runs and the workflow generation it was made for (read back by ``plan_from_child``)."""
    return {PLAN_ANNOTATION: json.dumps(plan.model_copy(update={"solve_seconds": 0}).to_wire(), sort_keys=True),
            PLAN_GENERATION_ANNOTATION: str(generation or 0)}


def plan_from_child(child: Mapping[str, Any] | None) -> tuple[Plan, int] | None:
    """The plan and generation a child was written for; None when it carries none (or one we cannot read)."""
    annotations = ((child or {}).get("metadata") or {}).get("annotations") or {}
    try:
        return (Plan.model_validate_json(annotations[PLAN_ANNOTATION]),
                int(annotations[PLAN_GENERATION_ANNOTATION]))
    except (KeyError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def _quantity(value: float) -> str:
    """A Kubernetes quantity without a trailing '.0'."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
