"""Small factories for valid objects; tests change one field and look at the verdict."""

from __future__ import annotations

import copy
from typing import Any


def stage(name: str, *, kind: str = "llm", deps: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "kind": kind, "dependsOn": deps or []}
    if kind == "llm":
        body.update(model="llama-3-1-8b", inputTokens=500, outputTokens=50)
    else:
        body.update(measuredLatencyMs=20, implementation="tessera.workers.runtime.builtins:identity")
    body.update(fields)
    return body


def workflow(stages: list[dict] | None = None, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "tessera.dev/v1alpha1",
        "kind": "AgentWorkflow",
        "metadata": {"name": "wf", "namespace": "default"},
        "spec": {"stages": stages or [stage("a"), stage("b", deps=["a"])], "slo": {"latencyMs": 2000}},
    }
    body["spec"].update(spec)
    return body


def hardware_class(**spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "tessera.dev/v1alpha1",
        "kind": "HardwareClass",
        "metadata": {"name": "gpu-x"},
        "spec": {"vendor": "NVIDIA", "generation": "X", "peakTflops": {"bf16": 100}, "memoryGiB": 40,
                 "memoryBandwidthGBps": 1000, "tdpWatts": 300, "idleWatts": 60, "usdPerHour": 1.0},
    }
    body["spec"].update(spec)
    return body


def power_budget(**capping: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tessera.dev/v1alpha1",
        "kind": "PowerBudget",
        "metadata": {"name": "rows"},
        "spec": {"provisionedWatts": 10000, "capping": capping},
    }


def with_change(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the dotted ``path`` (list indexes as numbers) set to ``value``."""
    out = copy.deepcopy(doc)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out
