"""CustomResourceDefinitions generated from the pydantic models: the one source of truth for crds/ and the chart."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from tessera.api.common import GROUP, VERSION
from tessera.api.hardware import HardwareClass
from tessera.api.model_profile import ModelProfile
from tessera.api.power import PowerBudget
from tessera.api.workflow import AgentWorkflow

CATEGORY = "tessera"


@dataclass(frozen=True)
class CRDInfo:
    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    scope: str
    printer_columns: tuple[dict[str, str], ...]
    # CEL rules keyed by the JSON path of the object they sit on ("spec", "spec.capping").
    rules: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    has_status: bool = True


def _col(name: str, type_: str, path: str, **extra: str) -> dict[str, str]:
    return {"name": name, "type": type_, "jsonPath": path, **extra}


AGE = _col("Age", "date", ".metadata.creationTimestamp")

RESOURCES: tuple[CRDInfo, ...] = (
    CRDInfo(
        AgentWorkflow, "AgentWorkflow", "agentworkflows", "agentworkflow", ("awf",), "Namespaced",
        (
            _col("Phase", "string", ".status.phase"),
            _col("SLO", "number", ".spec.slo.latencyMs", description="End-to-end latency target (ms)"),
            _col("Predicted", "number", ".status.predicted.latencyMsAtSlo",
                 description="Predicted latency at the SLO percentile (ms)"),
            _col("$/h", "number", ".status.predicted.usdPerHour"),
            _col("Watts", "number", ".status.predicted.watts"),
            AGE,
        ),
        rules={
            "spec": [
                {"rule": "self.stages.all(s, s.kind != 'llm' || has(s.model))",
                 "message": "every llm stage needs a model", "fieldPath": ".stages"},
                {"rule": "self.stages.all(a, self.stages.exists_one(b, b.name == a.name))",
                 "message": "stage names must be unique", "fieldPath": ".stages"},
                {"rule": "!has(self.slo.deadlineMs) || self.slo.deadlineMs >= self.slo.latencyMs",
                 "message": "deadlineMs must be at least latencyMs", "fieldPath": ".slo.deadlineMs"},
            ],
        },
    ),
    CRDInfo(
        HardwareClass, "HardwareClass", "hardwareclasses", "hardwareclass", ("hwc",), "Cluster",
        (
            _col("Vendor", "string", ".spec.vendor"),
            _col("Generation", "string", ".spec.generation"),
            _col("Devices", "integer", ".status.devices"),
            _col("$/h", "number", ".spec.usdPerHour", description="Cost per device-hour"),
            AGE,
        ),
        rules={"spec": [{"rule": "self.idleWatts < self.tdpWatts", "message": "idleWatts must be lower than tdpWatts",
                         "fieldPath": ".idleWatts"}]},
    ),
    CRDInfo(
        PowerBudget, "PowerBudget", "powerbudgets", "powerbudget", ("pb",), "Cluster",
        (
            _col("Provisioned", "number", ".spec.provisionedWatts"),
            _col("Oversubscription%", "number", ".spec.oversubscriptionPercent"),
            _col("Planned", "number", ".status.plannedWatts"),
            AGE,
        ),
        rules={"spec.capping": [
            {"rule": "self.thresholdT1Percent <= self.thresholdT2Percent",
             "message": "thresholdT1Percent must not exceed thresholdT2Percent", "fieldPath": ".thresholdT1Percent"},
            {"rule": "self.allCapPercent <= self.lowPriorityCapPercent",
             "message": "allCapPercent must not exceed lowPriorityCapPercent", "fieldPath": ".allCapPercent"},
        ]},
    ),
    CRDInfo(
        ModelProfile, "ModelProfile", "modelprofiles", "modelprofile", ("mp",), "Cluster",
        (
            _col("Params(B)", "number", ".spec.parametersBillions"),
            _col("Dtype", "string", ".spec.dtype"),
            AGE,
        ),
        rules={"spec.source": [{
            "rule": "[has(self.hub), has(self.uri), has(self.path), has(self.package)].filter(x, x).size() == 1",
            "message": "give exactly one of hub, uri, path, package",
        }]},
    ),
)


def build_crd(info: CRDInfo) -> dict[str, Any]:
    raw = info.model.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(raw, raw.get("$defs", {}))
    properties = schema["properties"]
    properties["metadata"] = {"type": "object"}
    for key in ("apiVersion", "kind"):
        properties[key] = {"type": "string"}
    schema["required"] = [r for r in schema.get("required", []) if r != "metadata"]
    if "status" in properties:
        _mark_conditions(properties["status"])
    for path, rules in info.rules.items():
        node = schema
        for part in path.split("."):
            node = node["properties"][part]
        node["x-kubernetes-validations"] = rules
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
        "additionalPrinterColumns": list(info.printer_columns),
    }
    if info.has_status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "tessera"}},
        "spec": {
            "group": GROUP,
            "scope": info.scope,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


def build_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD manifest, for every Tessera resource."""
    return {f"{info.plural}.{GROUP}.yaml": build_crd(info) for info in RESOURCES}


_DROP = {"title", "$defs", "propertyNames", "discriminator"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """JSON Schema (2020-12, as pydantic writes it) -> the structural OpenAPI v3 subset a CRD accepts."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return _structural(target, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        merged = {k: v for k, v in node.items() if k != "anyOf"}
        nullable = len(options) < len(node["anyOf"])
        if len(options) == 1:
            inner = _structural(options[0], defs)
        else:  # e.g. Literal["auto", "colocated"] | name: a plain string is what the API server can check
            inner = {"type": _common_type([_structural(o, defs) for o in options])}
        merged = {**inner, **{k: _structural(v, defs) for k, v in merged.items() if k not in _DROP}}
        if nullable:
            merged["nullable"] = True
            if merged.get("default") is None:
                merged.pop("default", None)
        return merged
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key in ("properties",):
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _structural(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("additionalProperties") is False:  # structural schemas prune unknown fields instead
        del out["additionalProperties"]
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _common_type(options: list[dict[str, Any]]) -> str:
    types = {o.get("type") for o in options}
    if len(types) != 1 or None in types:
        raise ValueError(f"cannot express a union of {types} in a structural schema")
    return types.pop()


def _mark_conditions(status: dict[str, Any]) -> None:
    conditions = status.get("properties", {}).get("conditions")
    if conditions:
        conditions["x-kubernetes-list-type"] = "map"
        conditions["x-kubernetes-list-map-keys"] = ["type"]
