"""Running a Serve application from a RayService's ``serveConfigV2`` on this one machine.

The operator writes the application for a cluster: replicas and ``ray_actor_options`` per stage,
GPUs, and a custom resource per hardware class (``tessera.dev/<class>``) that only that class's
worker group offers. Here every class becomes a custom resource of the local node, GPUs are dropped
and CPUs shrink to fractions, so the same application runs, placed as the plan says, as far as one
machine can. The demo, the runtime benchmark and the operator-to-workers test all go through this module.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

from tessera.api.serve import WorkflowAppArgs, ray_resource

# Enough units of every class's resource for any plan on one machine; the real limit is the CPU.
LOCAL_UNITS_PER_CLASS = 1000


def local_class_resources(class_names) -> dict[str, float]:
    """Custom resources for ``ray.init(resources=...)``: each hardware class, as if present here."""
    return {ray_resource(name): LOCAL_UNITS_PER_CLASS for name in class_names}


def _fit(options: dict[str, Any], cpus: float) -> dict[str, Any]:
    return {**{k: v for k, v in options.items() if k != "memory"}, "num_gpus": 0, "num_cpus": cpus}


def localize_application(application: dict[str, Any], *, max_replicas: int = 1, cpus_per_replica: float = 0.1) -> dict[str, Any]:
    """A copy of one ``serveConfigV2`` application that fits this machine.

    Kept as the operator wrote them: the import path, the workflow's spec, each stage's placement and
    hardware-class resource. Changed: GPUs -> 0, CPUs -> ``cpus_per_replica``, replicas capped at
    ``max_replicas`` (each replica of a model loads it), and an llm stage runs one call at a time per
    replica: the CPU engine interleaves concurrent calls token by token, which would only slow each of
    them down and leave nothing for the urgency queue to order.
    """
    app = copy.deepcopy(application)
    args = WorkflowAppArgs.model_validate(app.get("args", {}))
    llm_stages = {stage.name for stage in args.spec.stages if stage.kind.value == "llm"}
    for name, placed in args.deployments.items():
        args.deployments[name] = placed.model_copy(update={
            "replicas": min(placed.replicas, max_replicas),
            "ray_actor_options": _fit(placed.ray_actor_options, cpus_per_replica),
            "max_ongoing_requests": 1 if name in llm_stages else placed.max_ongoing_requests,
        })
    for key, model in args.models.items():
        args.models[key] = model.model_copy(update={
            "replicas": min(model.replicas, max_replicas), "engine": "cpu",
            "source": None,  # the cluster's weights are not here: the embedded SmolLM2 stands in
            "ray_actor_options": _fit(model.ray_actor_options, cpus_per_replica),
        })
    app["args"] = args.to_wire()
    return app


def build_application(application: dict[str, Any]):
    """The bound Serve application that ``import_path`` builds from ``args`` (what Serve does on a cluster)."""
    module_name, _, attr = application["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attr)
    return builder(application.get("args", {}))


def serve_applications(applications: list[dict[str, Any]], *, http: bool = False, localize: bool = True):
    """Run a workflow's applications (``api.serve.build_applications``: its models, then its runtime) on the
    local Serve, each one ready before the next starts; the handle of the last (the runtime's ingress).
    ``http``: also on Serve's HTTP proxy at each application's route."""
    from ray import serve

    handle = None
    for application in applications:
        app = localize_application(application) if localize else application
        handle = serve.run(build_application(app), name=app["name"], route_prefix=app["route_prefix"] if http else None)
    return handle
