"""The node power agent in the chart: a valid DaemonSet on accelerator nodes, with the least privilege it needs."""

from __future__ import annotations

import kubernetes_validate
import pytest

from .test_chart import KUBERNETES_VERSIONS, by_kind, render


def agent_objects(*settings: str) -> dict[str, dict]:
    docs = render(None, *settings)
    return {doc["kind"]: doc for doc in docs if "power-agent" in doc["metadata"]["name"]}


@pytest.mark.parametrize("settings", [(), ("powerAgent.readOnly=true",)], ids=["applies-limits", "read-only"])
def test_the_agent_pod_spec_is_valid_kubernetes(helm, settings):
    for doc in agent_objects(*settings).values():
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_agent_runs_on_every_hardware_class_node_and_serves_its_readings(helm):
    daemonset = agent_objects()["DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "tessera.dev/hardware-class", "operator": "Exists"}]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "tessera.workers.power.agent"]
    assert {"name": "readings", "containerPort": 9400, "protocol": "TCP"} in container["ports"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "nvidia.com/gpu" not in (container["resources"].get("limits") or {})  # never takes a GPU from workloads
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "power-agent"  # how the operator finds the agents


def test_writing_limits_needs_root_with_sys_admin_and_nothing_else(helm):
    objects = agent_objects()
    security = objects["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert "privileged" not in security
    (rule,) = objects["ClusterRole"]["rules"]
    assert rule == {"apiGroups": ["tessera.dev"], "resources": ["powerbudgets"], "verbs": ["get", "list"]}
    binding = objects["ClusterRoleBinding"]
    assert binding["subjects"][0]["name"] == objects["ServiceAccount"]["metadata"]["name"]


def test_a_read_only_agent_has_no_privilege_and_no_token(helm):
    objects = agent_objects("powerAgent.readOnly=true")
    assert "ClusterRole" not in objects and "ClusterRoleBinding" not in objects
    pod = objects["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    security = pod["containers"][0]["securityContext"]
    assert security["runAsNonRoot"] is True and security["capabilities"] == {"drop": ["ALL"]}
    assert "--read-only" in pod["containers"][0]["args"]


def test_the_agent_can_be_left_out(helm):
    assert agent_objects("powerAgent.enabled=false") == {}
    assert not [d for d in by_kind(render(None, "powerAgent.enabled=false"), "DaemonSet")]
