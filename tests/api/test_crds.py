"""The committed CRDs are exactly what the models generate, and they are structural schemas."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tessera.api.crdgen import RESOURCES, build_crds
from tessera.cli.crds import render

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("file_name,crd", sorted(build_crds().items()))
def test_committed_crd_matches_models(file_name, crd):
    committed = REPO / "crds" / file_name
    assert committed.exists(), f"crds/{file_name} missing: run `make crds`"
    assert committed.read_text() == render(crd), f"crds/{file_name} is stale: run `make crds`"


def walk(schema, path="$"):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("crd", build_crds().values(), ids=lambda c: c["metadata"]["name"])
def test_schema_is_structural(crd):
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
    assert yaml.safe_load(yaml.safe_dump(crd)) == crd


def test_agentworkflow_crd_conventions():
    crd = build_crds()["agentworkflows.tessera.dev.yaml"]
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["awf"] and "tessera" in names["categories"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "SLO", "Predicted", "$/h", "Watts", "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "observedGeneration" in conditions["items"]["properties"]
    assert "observedGeneration" in status["properties"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["stages"]["items"]["properties"]["kind"]["enum"] == [
        "llm", "retrieval", "tool", "sql", "transform"
    ]
    assert spec["properties"]["priority"]["default"] == 0
    assert any("exists_one" in rule["rule"] for rule in spec["x-kubernetes-validations"])


def test_every_resource_has_a_crd():
    assert {info.kind for info in RESOURCES} == {"AgentWorkflow", "HardwareClass", "PowerBudget", "ModelProfile"}
