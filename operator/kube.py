"""The one module that calls the Kubernetes API (besides kopf itself, which watches and patches).

RBAC the operator needs (the Helm chart's ClusterRole must grant exactly these):

  tessera.dev    agentworkflows                 get, list, watch, patch
  tessera.dev    agentworkflows/status          get, patch
  tessera.dev    hardwareclasses, powerbudgets,
                 modelprofiles                  get, list, watch
  ray.io         rayservices                    get, list, watch, create, patch, delete
  networking.k8s.io networkpolicies             get, create, patch   (one beside each RayService)
  ""             nodes                          get, list, watch
  ""             pods                           get, list, watch     (the power controller: worker pods'
                                                                      nodes, the power agents' addresses)
  ""             namespaces                     get, list, watch     (kopf: namespace discovery)
  tessera.dev    hardwareclasses/status, powerbudgets/status,
                 modelprofiles/status           get, patch           (the Valid and WithinBudget conditions)
  ""             events                         create, patch        (core/v1 Events, posted by kopf)
  events.k8s.io  events                         create, patch        (kopf posts through either)
  apiextensions.k8s.io customresourcedefinitions get, list, watch    (kopf: resource discovery)
  kopf.dev       clusterkopfpeerings            get, list, watch, patch   (peering between replicas;
  kopf.dev       kopfpeerings                   get, list, watch, patch    the namespaced one with --namespace)
  admissionregistration.k8s.io validatingwebhookconfigurations
                                                get, list, watch, create, patch
                                                (only when TESSERA_WEBHOOK_MANAGED is set)

Calls are synchronous (the ``kubernetes`` client), each with a time limit
(``OperatorSettings.api_timeout_seconds``); the handlers run them in a thread with ``asyncio.to_thread``,
outside the planner's turn. API failures become kopf's retry policy: ``kopf.TemporaryError`` for what may
pass (conflicts, server errors, a missing KubeRay CRD), ``kopf.PermanentError`` for what will not.
"""

from __future__ import annotations

from typing import Any, Mapping

import kopf

from tessera.api import GROUP, VERSION
from tessera.operator.settings import OperatorSettings

RAYSERVICES = ("ray.io", "v1", "rayservices")
AGENTWORKFLOWS = (GROUP, VERSION, "agentworkflows")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
RETRY_SECONDS = 5
MISSING_CRD_RETRY_SECONDS = 60


def configuration(settings: OperatorSettings) -> Any:
    """Client configuration: the kubeconfig named in the settings, the local one (--dev), or in-cluster."""
    import kubernetes

    config = kubernetes.client.Configuration()
    if settings.kubeconfig or settings.dev:
        kubernetes.config.load_kube_config(config_file=settings.kubeconfig, client_configuration=config)
    else:
        kubernetes.config.load_incluster_config(client_configuration=config)
    return config


def connection_info(config: Any) -> kopf.ConnectionInfo:
    """The same credentials for kopf's own watching and patching."""
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
        username=config.username or None, password=config.password or None, scheme=scheme, token=token,
        certificate_path=config.cert_file, private_key_path=config.key_file,
    )


class KubeAPI:
    """The few calls the operator makes, on one client per operator run."""

    def __init__(self, config: Any, timeout_seconds: float = 10):
        import kubernetes
        import urllib3

        self.timeout_seconds = timeout_seconds
        self._client = kubernetes.client.ApiClient(config)
        self._custom = kubernetes.client.CustomObjectsApi(self._client)
        self._core = kubernetes.client.CoreV1Api(self._client)
        self._api_exception = kubernetes.client.ApiException
        self._transport_error = urllib3.exceptions.HTTPError  # read timeouts, retries exhausted

    def close(self) -> None:
        self._client.close()

    def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call(f"reading RayService {namespace}/{name}", self._custom.get_namespaced_custom_object,
                          *RAYSERVICES[:2], namespace, RAYSERVICES[2], name, missing_ok=True)

    def apply_rayservice(self, desired: Mapping[str, Any], actual: Mapping[str, Any] | None) -> str:
        """Create the RayService, or replace the parts the operator owns; returns what it did."""
        meta = desired["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if actual is None:
            self._call(f"creating RayService {ns}/{name}", self._custom.create_namespaced_custom_object,
                       *RAYSERVICES[:2], ns, RAYSERVICES[2], dict(desired))
            return "created"
        actual_meta = actual.get("metadata") or {}
        if (actual.get("spec") == desired["spec"]
                and _subset(meta["labels"], actual_meta.get("labels") or {})
                and _subset(meta.get("annotations") or {}, actual_meta.get("annotations") or {})
                and actual_meta.get("ownerReferences") == meta["ownerReferences"]):
            return "unchanged"
        # A JSON patch replacing the whole spec: a merge patch would keep keys the desired spec no longer has.
        ops = [
            {"op": "replace" if "spec" in actual else "add", "path": "/spec", "value": desired["spec"]},
            {"op": "add" if "labels" not in actual_meta else "replace", "path": "/metadata/labels",
             "value": {**(actual_meta.get("labels") or {}), **meta["labels"]}},
            {"op": "add" if "annotations" not in actual_meta else "replace", "path": "/metadata/annotations",
             "value": {**(actual_meta.get("annotations") or {}), **(meta.get("annotations") or {})}},
            {"op": "add" if "ownerReferences" not in actual_meta else "replace",
             "path": "/metadata/ownerReferences", "value": meta["ownerReferences"]},
        ]
        self._call(f"updating RayService {ns}/{name}", self._custom.patch_namespaced_custom_object,
                   *RAYSERVICES[:2], ns, RAYSERVICES[2], name, ops, _content_type=JSON_PATCH)
        return "updated"

    def apply_network_policy(self, desired: Mapping[str, Any]) -> str:
        """Create the NetworkPolicy beside a RayService, or bring its spec back to ``desired``."""
        import kubernetes

        api = kubernetes.client.NetworkingV1Api(self._client)
        ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        actual = self._call(f"reading NetworkPolicy {ns}/{name}", api.read_namespaced_network_policy, name, ns,
                            missing_ok=True)
        if actual is None:
            self._call(f"creating NetworkPolicy {ns}/{name}", api.create_namespaced_network_policy, ns, dict(desired))
            return "created"
        if self._client.sanitize_for_serialization(actual.spec) == desired["spec"]:
            return "unchanged"
        self._call(f"updating NetworkPolicy {ns}/{name}", api.patch_namespaced_network_policy, name, ns,
                   [{"op": "replace", "path": "/spec", "value": desired["spec"]}], _content_type=JSON_PATCH)
        return "updated"

    def delete_rayservice(self, namespace: str, name: str) -> bool:
        deleted = self._call(f"deleting RayService {namespace}/{name}", self._custom.delete_namespaced_custom_object,
                             *RAYSERVICES[:2], namespace, RAYSERVICES[2], name, missing_ok=True)
        return deleted is not None

    def get_workflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call(f"reading AgentWorkflow {namespace}/{name}", self._custom.get_namespaced_custom_object,
                          *AGENTWORKFLOWS[:2], namespace, AGENTWORKFLOWS[2], name, missing_ok=True)

    def patch_workflow_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self._call(f"writing the status of AgentWorkflow {namespace}/{name}",
                   self._custom.patch_namespaced_custom_object_status,
                   *AGENTWORKFLOWS[:2], namespace, AGENTWORKFLOWS[2], name, {"status": dict(patch)},
                   _content_type=MERGE_PATCH, missing_ok=True)

    def peering_exists(self, name: str, namespaces: list[str]) -> bool:
        """Whether kopf's peering object exists: ClusterKopfPeering ``name``, or KopfPeering in the first namespace."""
        if namespaces:
            found = self._call(f"reading KopfPeering {namespaces[0]}/{name}", self._custom.get_namespaced_custom_object,
                               "kopf.dev", "v1", namespaces[0], "kopfpeerings", name, missing_ok=True)
        else:
            found = self._call(f"reading ClusterKopfPeering {name}", self._custom.get_cluster_custom_object,
                               "kopf.dev", "v1", "clusterkopfpeerings", name, missing_ok=True)
        return found is not None

    def patch_cluster_status(self, plural: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge ``status`` into the status of a cluster-scoped Tessera object (HardwareClass, PowerBudget, ...)."""
        self._call(f"writing the status of {plural}/{name}", self._custom.patch_cluster_custom_object_status,
                   GROUP, VERSION, plural, name, {"status": dict(status)}, _content_type=MERGE_PATCH, missing_ok=True)

    def _call(self, what: str, fn, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self.timeout_seconds, **kwargs)
        except self._api_exception as err:
            if err.status == 404 and missing_ok:
                return None
            raise api_error(what, err.status, err.reason, err.body) from None
        except (OSError, self._transport_error) as err:  # refused, timed out: the API server may be restarting
            raise kopf.TemporaryError(f"{what}: {err}", delay=RETRY_SECONDS) from None


def api_error(what: str, status: int | None, reason: str | None, body: Any) -> Exception:
    """The retry policy for an API failure."""
    detail = f"{what}: HTTP {status} {reason or ''}".strip()
    if status == 404:  # the collection itself is missing: KubeRay is not installed (yet)
        return kopf.TemporaryError(f"{detail} (is KubeRay's RayService CRD installed?)", delay=MISSING_CRD_RETRY_SECONDS)
    if status in (409, 429) or status is None or status >= 500:
        return kopf.TemporaryError(detail, delay=1 if status == 409 else RETRY_SECONDS)
    return kopf.PermanentError(f"{detail}: {str(body)[:300]}")


def _subset(small: Mapping[str, Any], big: Mapping[str, Any]) -> bool:
    return all(big.get(k) == v for k, v in small.items())
