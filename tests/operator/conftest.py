"""Fixtures of the operator tests: an emulated cluster with the example inventory, the real operator on it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tessera_devtools import EXAMPLES, EmulatedCluster, OperatorRun, wait_for

API = "tessera.dev/v1alpha1"
INVENTORY = [EXAMPLES / "inventory" / f for f in ("hardware-classes.yaml", "model-profiles.yaml", "power-budget.yaml")]


def workflow(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """A small AgentWorkflow (one Llama-3.1-8B stage and a tool call); keyword arguments replace spec fields."""
    body = {
        "apiVersion": API, "kind": "AgentWorkflow", "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "slo": {"latencyMs": 8000, "percentile": 95, "requestsPerSecond": 2},
            "stages": [
                {"name": "answer", "kind": "llm", "model": "llama-3-1-8b", "inputTokens": 600, "outputTokens": 150},
                {"name": "file-ticket", "kind": "tool", "measuredLatencyMs": 100, "dependsOn": ["answer"],
                 "implementation": "tessera.workers.runtime.builtins:identity"},
            ],
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def get_workflow(cluster: EmulatedCluster, name: str, namespace: str = "default") -> dict[str, Any] | None:
    return cluster.get(API, "agentworkflows", name, namespace)


def get_rayservice(cluster: EmulatedCluster, name: str, namespace: str = "default") -> dict[str, Any] | None:
    return cluster.get("ray.io/v1", "rayservices", name, namespace)


def condition(body: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((body or {}).get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return cond
    return {}


def wait_status(cluster: EmulatedCluster, name: str, check, timeout: float = 30, namespace: str = "default",
                what: str = "") -> dict[str, Any]:
    """Wait until the workflow exists and ``check(body)`` holds; return the body."""
    def ready():
        body = get_workflow(cluster, name, namespace)
        return body if body is not None and check(body) else None

    return wait_for(ready, timeout, what=what or f"AgentWorkflow {name}")


def deployed_phase(body: dict[str, Any]) -> bool:
    return phase(body) in ("Deploying", "Running")


def phase(body: dict[str, Any]) -> str | None:
    return (body.get("status") or {}).get("phase")


@pytest.fixture
def cluster():
    with EmulatedCluster(nodes=EmulatedCluster.example_nodes()) as emulated:
        emulated.apply_files(*INVENTORY)
        yield emulated


@pytest.fixture
def operator(cluster):
    with OperatorRun(cluster) as run:
        yield run
