"""Running a Serve application from a RayService's ``serveConfigV2`` on this one machine.

The operator writes the application for a cluster: replicas and ``ray_actor_options`` per stage,
GPUs, and a custom resource per hardware class (``tessera.dev/<class>``) that only that class's
worker group offers. Here every class becomes a custom resource of the local node, GPUs are dropped
and CPUs shrink to fractions, so the same application runs, placed as the plan says, as far as one
machine can. The demo and the operator-to-workers test both go through this module.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

RESOURCE_PREFIX = "tessera.dev/"
# Enough units of every class's resource for any plan on one machine; the real limit is the CPU.
LOCAL_UNITS_PER_CLASS = 1000


def local_class_resources(class_names) -> dict[str, float]:
    """Custom resources for ``ray.init(resources=...)``: each hardware class, as if present here."""
    return {f"{RESOURCE_PREFIX}{name}": LOCAL_UNITS_PER_CLASS for name in class_names}


def localize_application(application: dict[str, Any], *, max_replicas: int = 1, cpus_per_replica: float = 0.1) -> dict[str, Any]:
    """A copy of one ``serveConfigV2`` application that fits this machine.

    Kept as the operator wrote them: the import path, the args, the stages, and each stage's
    hardware-class resource. Changed: GPUs -> 0, CPUs -> ``cpus_per_replica``, replicas capped at
    ``max_replicas`` (each replica of an LLM stage loads the model).
    """
    app = copy.deepcopy(application)
    for stage in app.get("args", {}).get("stages", {}).values():
        stage["replicas"] = min(int(stage.get("replicas", 1)), max_replicas)
        options = stage.setdefault("rayActorOptions", {})
        options["num_gpus"] = 0
        options["num_cpus"] = cpus_per_replica
        options.pop("memory", None)
    return app


def build_application(application: dict[str, Any]):
    """The bound Serve application that ``import_path`` builds from ``args`` (what Serve does on a cluster)."""
    module_name, _, attr = application["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attr)
    return builder(application.get("args", {}))
