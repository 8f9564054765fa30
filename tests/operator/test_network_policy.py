"""The per-RayService NetworkPolicy and the pod hardening of the head and worker pods (pure builders)."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from tessera.api import HardwareClass, parse_resource
from tessera.api.serve import WORKER_METRICS_PORT
from tessera.cli.documents import load
from tessera.operator.builders import (
    WORKFLOW_LABEL, build_head_group, build_labels, build_owner_reference, build_worker_group, child_name,
)
from tessera.operator.network import DASHBOARD_PORT, SERVE_PORT, build_network_policy
from tessera.operator.settings import OperatorSettings
from tessera_devtools import EXAMPLES

from .conftest import workflow

RAY_PORTS = (6379, DASHBOARD_PORT, 10001, 10002, 20000)  # GCS, dashboard, client, worker ports
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
OWN_POD = {"ns": "team-a", "labels": {WORKFLOW_LABEL: "support"}}
OTHER_POD = {"ns": "team-a", "labels": {WORKFLOW_LABEL: "other"}}
KUBERAY_POD = {"ns": "ray-system", "labels": {"app.kubernetes.io/name": "kuberay-operator"}}
PROMETHEUS_POD = {"ns": "monitoring", "labels": {"app": "prometheus"}}


def parsed(name: str = "support", namespace: str = "team-a") -> dict:
    """The metadata of the workflow's RayService, as build_rayservice writes it."""
    body = json.loads(json.dumps(workflow(name, namespace)))
    body["metadata"]["uid"] = "uid-1"
    flow = parse_resource(body)
    return {"metadata": {"name": child_name(name), "namespace": namespace, "labels": build_labels(flow),
                         "ownerReferences": [build_owner_reference(flow)]}}


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admits(policy: dict, source: dict, port: int) -> bool:
    """Whether ``policy`` lets ``source`` (namespace, labels) reach a selected pod on ``port`` (TCP)."""
    namespace = policy["metadata"]["namespace"]
    for rule in policy["spec"]["ingress"]:
        if "ports" in rule and port not in [p["port"] for p in rule["ports"]]:
            continue
        if "from" not in rule:
            return True
        for peer in rule["from"]:
            ns_ok = (selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source["ns"]})
                     if "namespaceSelector" in peer else source["ns"] == namespace)
            if ns_ok and selects(peer.get("podSelector", {}), source["labels"]):
                return True
    return False


@pytest.mark.parametrize("source, port, allowed", [
    (OWN_POD, 6379, True), (OWN_POD, 10001, True), (OWN_POD, 20000, True), (OWN_POD, SERVE_PORT, True),
    (OTHER_POD, 6379, False), (OTHER_POD, DASHBOARD_PORT, False), (OTHER_POD, 10001, False),
    (OTHER_POD, 20000, False), (OTHER_POD, SERVE_PORT, True),
    (KUBERAY_POD, DASHBOARD_PORT, True), (KUBERAY_POD, 6379, False), (KUBERAY_POD, 10001, False),
    (PROMETHEUS_POD, WORKER_METRICS_PORT, True), (PROMETHEUS_POD, 6379, False),
    (OTHER_POD, WORKER_METRICS_PORT, False),
])
def test_only_the_workflows_own_pods_reach_the_ray_ports(source, port, allowed):
    policy = build_network_policy(parsed(), metrics_clients=[MONITORING])
    assert admits(policy, source, port) is allowed


def test_serve_clients_can_be_restricted_or_shut_out():
    clients = [{"podSelector": {"matchLabels": {"role": "frontend"}}}]
    policy = build_network_policy(parsed(), serve_clients=clients)
    assert admits(policy, {"ns": "team-a", "labels": {"role": "frontend"}}, SERVE_PORT)
    assert not admits(policy, OTHER_POD, SERVE_PORT)
    assert not admits(build_network_policy(parsed(), serve_clients=[]), OTHER_POD, SERVE_PORT)


def test_policy_sits_beside_the_rayservice_and_is_a_valid_object():
    policy = build_network_policy(parsed("x" * 60), serve_clients=None, metrics_clients=[MONITORING])
    assert policy["metadata"]["name"] == child_name("x" * 60)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    kubernetes_validate.validate(policy, kubernetes_validate.latest_version(), strict=True)


def test_head_and_worker_pods_are_hardened():
    hardware = load([str(EXAMPLES / "inventory")]).of_kind(HardwareClass)[0]
    pods = [build_head_group("img", {}, OperatorSettings())["template"]["spec"],
            build_worker_group(hardware, 1, "img", {})["template"]["spec"]]
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_the_operator_writes_the_policy_beside_the_rayservice(cluster, operator):
    from tessera_devtools import wait_for

    from .conftest import get_rayservice, wait_status

    cluster.create(workflow("qa"))
    wait_status(cluster, "qa", lambda body: (body.get("status") or {}).get("plan"))
    child = wait_for(lambda: get_rayservice(cluster, "qa"), what="RayService qa")
    policy = wait_for(lambda: cluster.get("networking.k8s.io/v1", "networkpolicies", "qa", "default"),
                      what="NetworkPolicy qa")
    assert policy["spec"] == build_network_policy(child)["spec"]
    assert policy["metadata"]["ownerReferences"] == child["metadata"]["ownerReferences"]


def test_who_reaches_serve_and_metrics_comes_from_the_settings():
    settings = OperatorSettings.from_env({"TESSERA_SERVE_CLIENTS": json.dumps([MONITORING]),
                                          "TESSERA_METRICS_CLIENTS": "[]"})
    policy = build_network_policy(parsed(), settings.serve_clients, settings.metrics_clients)
    assert admits(policy, PROMETHEUS_POD, SERVE_PORT) and not admits(policy, OTHER_POD, SERVE_PORT)
    assert not admits(policy, PROMETHEUS_POD, WORKER_METRICS_PORT) and admits(policy, OWN_POD, WORKER_METRICS_PORT)
    default = OperatorSettings.from_env({})
    assert default.serve_clients is None and admits(
        build_network_policy(parsed(), default.serve_clients, default.metrics_clients), OTHER_POD, SERVE_PORT)
