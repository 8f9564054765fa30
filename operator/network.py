"""The NetworkPolicy beside each RayService: Ray's ports are for the workflow's own pods only.

Ray has no authentication: whoever reaches a head's GCS (6379), dashboard (8265) or client (10001) port, or a
worker's ports, can run code in the cluster. The policy selects the workflow's pods and admits
  - the workflow's own pods on every port (Ray's worker ports are dynamic, so they cannot be listed);
  - the KubeRay operator on the dashboard (8265) and dashboard-agent (52365) ports, where it submits the Serve
    config and checks health; this is why the head keeps binding its dashboard to 0.0.0.0 rather than
    127.0.0.1: KubeRay reaches it over the network, and the policy, not the bind address, keeps others out;
  - ``serve_clients`` on Serve's HTTP port (8000);
  - ``metrics_clients`` on the workers' metrics port.
A peer list of None admits every source on that port; an empty list admits none. See docs/helm.md.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tessera.api.serve import WORKER_METRICS_PORT
from tessera.operator.builders import WORKFLOW_LABEL

SERVE_PORT = 8000
DASHBOARD_PORT = 8265
DASHBOARD_AGENT_PORT = 52365
# Where the KubeRay operator runs, by the labels of its Helm chart; any namespace.
KUBERAY_PEER: dict[str, Any] = {"namespaceSelector": {},
                                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}


def _ingress(peers: Sequence[dict[str, Any]] | None, *ports: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": port} for port in ports]}
    if peers is not None:
        rule["from"] = [dict(peer) for peer in peers]
    return rule


def build_network_policy(rayservice: Mapping[str, Any], serve_clients: Sequence[dict[str, Any]] | None = None,
                         metrics_clients: Sequence[dict[str, Any]] | None = None,
                         kuberay: Sequence[dict[str, Any]] = (KUBERAY_PEER,)) -> dict[str, Any]:
    """The NetworkPolicy beside ``rayservice`` (as ``build_rayservice`` makes it): same name, namespace,
    labels and owner (the workflow), selecting the pods of the same workflow."""
    meta = rayservice["metadata"]
    labels = meta["labels"]
    own_pods = {"podSelector": {"matchLabels": {WORKFLOW_LABEL: labels[WORKFLOW_LABEL]}}}
    ingress = [{"from": [own_pods]}, _ingress(list(kuberay), DASHBOARD_PORT, DASHBOARD_AGENT_PORT)]
    if serve_clients is None or serve_clients:
        ingress.append(_ingress(serve_clients, SERVE_PORT))
    if metrics_clients is None or metrics_clients:
        ingress.append(_ingress(metrics_clients, WORKER_METRICS_PORT))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": dict(labels),
            "ownerReferences": [dict(ref) for ref in meta["ownerReferences"]],
        },
        "spec": {"podSelector": own_pods["podSelector"], "policyTypes": ["Ingress"], "ingress": ingress},
    }
