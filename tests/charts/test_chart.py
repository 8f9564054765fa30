"""The chart with the real helm binary: lint, render with several value sets, validate against Kubernetes schemas."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from .chartlib import CHART, DASHBOARDS, REPO_ROOT, RULES_FILE, VALUE_SETS, run_tool, tool

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
# Kinds from other projects' CRDs (the Prometheus Operator's, kopf's peering): Kubernetes has no schema for them;
# their content is checked below.
FOREIGN_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "KopfPeering", "ClusterKopfPeering",
                 "Certificate", "Issuer"}


@functools.cache
def render(values_file: str | None = None, *set_args: str) -> list[dict]:
    argv = [tool("helm"), "template", "tessera", str(CHART), "--namespace", "tessera-system"]
    if values_file:
        argv += ["-f", values_file]
    for item in set_args:
        argv += ["--set", item]
    return [doc for doc in yaml.safe_load_all(run_tool(*argv).stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def value_set_ids(path) -> str:
    return path.stem


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=value_set_ids)
def test_helm_lint_is_clean(helm, values_file):
    result = run_tool(helm, "lint", "--strict", str(CHART), "-f", str(values_file))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=value_set_ids)
def test_rendered_manifests_match_the_kubernetes_schemas(helm, values_file):
    docs = render(str(values_file))
    validated = set()
    for doc in docs:
        if doc["kind"] in FOREIGN_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: {error}")
        validated.add(doc["kind"])
    assert {"Deployment", "ClusterRole", "Service"} <= validated


def test_every_value_set_is_exercised():
    names = {path.stem for path in VALUE_SETS}
    assert {"defaults", "monitoring", "namespaced", "ha-namespaced", "hardened"} <= names


def test_crds_in_the_chart_are_the_repository_crds_byte_for_byte():
    source = {path.name: path.read_bytes() for path in (REPO_ROOT / "crds").glob("*.yaml")}
    chart_copy = {path.name: path.read_bytes() for path in (CHART / "files" / "crds").glob("*.yaml")}
    assert source, "crds/ is empty: run `make crds`"
    assert chart_copy == source, "charts/tessera/files/crds/ differs from crds/: run `make crds`"


def test_crds_are_templated_and_kept_by_default(helm):
    crds = by_kind(render(), "CustomResourceDefinition")
    assert sorted(crd["metadata"]["name"] for crd in crds) == sorted(
        yaml.safe_load(path.read_text())["metadata"]["name"] for path in (REPO_ROOT / "crds").glob("*.yaml")
    )
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    source = yaml.safe_load((REPO_ROOT / "crds" / "agentworkflows.tessera.dev.yaml").read_text())
    rendered = next(crd for crd in crds if crd["metadata"]["name"] == "agentworkflows.tessera.dev")
    assert rendered["spec"] == source["spec"]


def test_crds_values_switch_install_and_keep(helm):
    assert not by_kind(render(None, "crds.install=false"), "CustomResourceDefinition")
    for crd in by_kind(render(None, "crds.keep=false"), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_operator_pod_is_non_root_read_only_and_probed(helm):
    (deployment,) = by_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    health_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    assert f"--liveness=http://0.0.0.0:{health_port}/healthz" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["command"] == ["kopf", "run", "-m", "tessera.operator.main"]
    assert "--all-namespaces" in container["args"]


def rbac_rules(docs: list[dict]) -> list[dict]:
    return [rule for doc in docs if doc["kind"] in ("ClusterRole", "Role") for rule in doc["rules"]]


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=value_set_ids)
def test_rbac_has_no_wildcards_and_no_secrets(helm, values_file):
    rules = rbac_rules(render(str(values_file)))
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert "secrets" not in rule["resources"]


def granted(docs: list[dict], kind: str) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for doc in by_kind(docs, kind):
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def operator_rbac_table() -> dict[tuple[str, str], set[str]]:
    """The permissions tessera.operator.kube's docstring says the operator needs (its entries that are
    always needed; conditional ones say "only when")."""
    from tessera.operator import kube

    text = kube.__doc__.split("RBAC the operator needs", 1)[1].split("\n\n", 2)[1]
    entries: list[tuple[str, list[str], set[str], str]] = []
    for line in text.splitlines():
        tokens = line.replace(",", " ").split()
        if tokens and ("." in tokens[0] or tokens[0] == '""'):
            entries.append((tokens.pop(0).strip('"'), [], set(), ""))
        group, resources, verbs, _ = entries[-1]
        for token in tokens:
            if token.startswith("("):
                break
            if token in VERBS:
                verbs.add(token)
            elif verbs:  # text after the verbs is a comment
                break
            else:
                resources.append(token)
        entries[-1] = (group, resources, verbs, entries[-1][3] + line)
    table: dict[tuple[str, str], set[str]] = {}
    for group, resources, verbs, lines in entries:
        if "only when" in lines or "peering" in lines:
            continue
        for resource in resources:
            table[(group, resource)] = verbs
    return table


def test_rbac_grants_exactly_what_the_operator_says_it_uses(helm):
    expected = operator_rbac_table()
    assert ("ray.io", "rayservices") in expected and ("tessera.dev", "agentworkflows/status") in expected
    assert granted(render(), "ClusterRole") == expected


@pytest.mark.parametrize(("settings", "kind", "resource"), [
    (("operator.replicas=2",), "ClusterRole", "clusterkopfpeerings"),
    (("operator.replicas=2", "operator.watchNamespaces={team-a}"), "Role", "kopfpeerings"),
])
def test_several_replicas_peer_through_kopf(helm, settings, kind, resource):
    docs = render(None, *settings)
    assert granted(docs, kind)[("kopf.dev", resource)] == {"get", "list", "watch", "patch"}
    assert [crd["metadata"]["name"] for crd in by_kind(docs, "CustomResourceDefinition")
            if crd["spec"]["group"] == "kopf.dev"] == [f"{resource}.kopf.dev"]
    (deployment,) = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    peering = [doc for doc in docs if doc["apiVersion"] == "kopf.dev/v1"]
    assert peering and {doc["metadata"]["name"] for doc in peering} == {env["TESSERA_PEERING_NAME"]}
    assert "TESSERA_STANDALONE" not in env and deployment["spec"]["replicas"] == 2


def operator_env(docs: list[dict]) -> dict[str, str]:
    (deployment,) = by_kind(docs, "Deployment")
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=value_set_ids)
def test_the_operator_understands_every_setting_the_chart_passes(helm, values_file):
    from tessera.operator.settings import OperatorSettings

    env = operator_env(render(str(values_file)))
    unknown = set(env) - set(OperatorSettings.env_names().values())
    assert not unknown, f"the operator reads no {unknown}"
    settings = OperatorSettings.from_env(env)
    assert settings.metrics_port == int(env["TESSERA_METRICS_PORT"])
    values = yaml.safe_load(values_file.read_text()) or {}
    assert settings.namespaces == values.get("operator", {}).get("watchNamespaces", [])
    assert settings.standalone == (values.get("operator", {}).get("replicas", 1) == 1)


def test_the_operator_module_the_container_runs_exists(helm):
    (deployment,) = by_kind(render(), "Deployment")
    module = deployment["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert importlib.util.find_spec(module) is not None


def test_watched_namespaces_get_roles_and_the_cluster_role_keeps_only_cluster_scope(helm):
    docs = render(None, "operator.watchNamespaces={team-a,team-b}")
    roles = by_kind(docs, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    cluster = granted(docs, "ClusterRole")
    assert ("tessera.dev", "agentworkflows") not in cluster and ("ray.io", "rayservices") not in cluster
    assert ("ray.io", "rayservices") in granted(docs, "Role")
    (deployment,) = by_kind(docs, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_monitoring_objects_are_behind_their_values(helm):
    defaults = render()
    assert not by_kind(defaults, "ServiceMonitor") and not by_kind(defaults, "PrometheusRule")
    monitoring = render(str(CHART.parent.parent / "tests" / "charts" / "values" / "monitoring.yaml"))
    (monitor,) = by_kind(monitoring, "ServiceMonitor")
    (service,) = by_kind(monitoring, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The operator-down alert expects the job to be called tessera-operator.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "tessera-operator"
    assert 'job="tessera-operator"' in RULES_FILE.read_text()


def test_prometheus_rule_carries_the_one_rules_file_unchanged(helm, promtool, tmp_path):
    (rule,) = by_kind(render(None, "prometheusRule.enabled=true"), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]
    extracted = tmp_path / "from-chart.yaml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    run_tool(promtool, "check", "rules", str(extracted))


def test_dashboards_are_configmaps_for_the_grafana_sidecar(helm):
    maps = by_kind(render(), "ConfigMap")
    assert len(maps) == len(DASHBOARDS) >= 2
    shipped = {path.name: json.loads(path.read_text()) for path in DASHBOARDS}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = config_map["data"].items()
        assert json.loads(text) == shipped[name]
    namespaced = by_kind(render(None, "dashboards.namespace=monitoring"), "ConfigMap")
    assert {m["metadata"]["namespace"] for m in namespaced} == {"monitoring"}


def validating_handler_id(webhook_env: dict[str, str]) -> str:
    """kopf serves each admission handler at /<handler id>: the id of the operator's one validating handler,
    in a fresh interpreter with the environment the chart gives the operator."""
    script = ("import kopf, tessera.operator.main; "
              "print(*[h.id for h in kopf.get_default_registry()._webhooks.get_all_handlers()])")
    result = subprocess.run([sys.executable, "-P", "-c", script], env={**os.environ, **webhook_env},
                            capture_output=True, text=True, timeout=120, check=True)
    (handler_id,) = result.stdout.split()
    return handler_id


def test_webhook_is_wired_to_the_operator_with_a_matching_certificate(helm):
    docs = render(None, "webhook.enabled=true")
    (config,) = by_kind(docs, "ValidatingWebhookConfiguration")
    (secret,) = by_kind(docs, "Secret")
    (service,) = by_kind(docs, "Service")
    (deployment,) = by_kind(docs, "Deployment")
    (webhook,) = config["webhooks"]
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert webhook["clientConfig"]["service"]["name"] == service["metadata"]["name"]
    webhook_env = {k: v for k, v in operator_env(docs).items() if k.startswith("TESSERA_WEBHOOK_")}
    assert webhook["clientConfig"]["service"]["path"] == f"/{validating_handler_id(webhook_env)}"
    port = next(p for p in service["spec"]["ports"] if p["name"] == "webhook")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    mounted = {v["name"] for v in container["volumeMounts"]}
    assert any(v.get("secret", {}).get("secretName") == secret["metadata"]["name"] and v["name"] in mounted
               for v in deployment["spec"]["template"]["spec"]["volumes"])
    assert not by_kind(render(), "ValidatingWebhookConfiguration")


HARDENED = str(next(path for path in VALUE_SETS if path.stem == "hardened"))


def test_the_operator_pod_takes_a_digest_and_no_service_links(helm):
    (deployment,) = by_kind(render(HARDENED), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    assert pod["containers"][0]["image"] == (
        "ghcr.io/tessera-dev/tessera-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    (default,) = by_kind(render(), "Deployment")
    assert default["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "ghcr.io/tessera-dev/tessera-operator:")


def test_the_worker_image_allowlist_reaches_the_operator(helm):
    from tessera.operator.settings import OperatorSettings

    env = operator_env(render(HARDENED))
    assert OperatorSettings.from_env(env).allowed_worker_images == ["ghcr.io/my-org/*", "registry.local/*"]
    assert "TESSERA_ALLOWED_WORKER_IMAGES" not in operator_env(render())


def test_pod_disruption_budget_selects_the_operator_pods(helm):
    docs = render(HARDENED)
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    (deployment,) = by_kind(docs, "Deployment")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"] and pdb["spec"]["minAvailable"] == 1
    (pdb,) = by_kind(render(HARDENED, "podDisruptionBudget.maxUnavailable=1"), "PodDisruptionBudget")
    assert pdb["spec"] == {"selector": deployment["spec"]["selector"], "maxUnavailable": 1}
    assert not by_kind(render(), "PodDisruptionBudget")


def test_network_policy_admits_only_the_configured_sources_to_the_webhook_and_metrics(helm):
    docs = render(HARDENED)
    (policy,) = by_kind(docs, "NetworkPolicy")
    (deployment,) = by_kind(docs, "Deployment")
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert by_port == {ports["webhook"]: [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                       ports["metrics"]: [{"namespaceSelector": {"matchLabels": {
                           "kubernetes.io/metadata.name": "monitoring"}}}]}
    assert not by_kind(render(), "NetworkPolicy")


def test_cert_manager_issues_the_webhook_certificate_and_injects_its_ca(helm):
    docs = render(HARDENED)
    assert not by_kind(docs, "Secret")  # cert-manager writes it
    (certificate,) = by_kind(docs, "Certificate")
    (issuer,) = by_kind(docs, "Issuer")
    (config,) = by_kind(docs, "ValidatingWebhookConfiguration")
    (deployment,) = by_kind(docs, "Deployment")
    (service,) = by_kind(docs, "Service")
    namespace = certificate["metadata"]["namespace"]
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{namespace}/{certificate['metadata']['name']}")
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"] and "selfSigned" in issuer["spec"]
    assert f"{service['metadata']['name']}.{namespace}.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["secretName"] in {
        v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    external = render(HARDENED, "webhook.certManager.issuerRef.name=corp-ca",
                      "webhook.certManager.issuerRef.kind=ClusterIssuer")
    assert not by_kind(external, "Issuer")
    assert by_kind(external, "Certificate")[0]["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


def test_notes_name_the_release_and_the_rollout_command(helm):
    # helm template leaves NOTES.txt out; a client-side dry-run install renders it.
    result = run_tool(helm, "install", "tessera", str(CHART), "--namespace", "tessera-system", "--dry-run=client")
    assert "kubectl -n tessera-system rollout status deployment/tessera" in result.stdout


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("operator.logLevel=LOUD", "at '/operator/logLevel'"),
        ("metrics.port=70000", "at '/metrics/port'"),
        ("webhook.failurePolicy=Sometimes", "at '/webhook/failurePolicy'"),
        ("crds.instal=true", "'instal' not allowed"),
        ("image.digest=latest", "at '/image/digest'"),
        ("webhook.certManager.duration=a-year", "at '/webhook/certManager/duration'"),
        # Equal ports: JSON Schema cannot compare two values, so the chart's template refuses them.
        ("metrics.port=8080", "metrics.port and operator.healthPort are both 8080"),
        ("webhook.enabled=true,webhook.port=9090", "are both 9090"),
    ],
)
def test_the_schema_rejects_bad_values_naming_the_field(helm, setting, named):
    result = run_tool(helm, "template", "tessera", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


def leaf_keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, dict) and value and path not in FREE_FORM_VALUES:
            keys += leaf_keys(value, f"{path}.")
    return keys


# Values that pass through as Kubernetes fields: their inner keys are Kubernetes', not the chart's.
FREE_FORM_VALUES = {"resources", "podSecurityContext", "securityContext", "workerPodMonitor.podSelector",
                    "powerAgent.resources"}


def test_every_value_is_documented_in_values_yaml_and_in_the_schema():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = text.splitlines()
    for key in leaf_keys(values):
        node = schema
        for part in key.split("."):
            node = node["properties"][part]
        assert node.get("description"), f"{key} has no description in values.schema.json"
        name = key.split(".")[-1]
        indent = "  " * key.count(".")
        line = next(i for i, line in enumerate(lines) if line.startswith(f"{indent}{name}:"))
        comment = lines[line - 1].strip() if line else ""
        assert comment.startswith("#"), f"{key} has no comment above it in values.yaml"


def test_every_value_is_in_the_helm_guide():
    guide = (REPO_ROOT / "docs" / "helm.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    leaves = [key for key in leaf_keys(values) if not isinstance(lookup(values, key), dict) or key in FREE_FORM_VALUES
              or not lookup(values, key)]
    missing = [key for key in leaves if f"| `{key}` |" not in guide]
    assert not missing, f"docs/helm.md's table of values lacks {missing}"


def lookup(values: dict, key: str):
    for part in key.split("."):
        values = values[part]
    return values


def test_who_reaches_serve_reaches_the_operator(helm, tmp_path):
    from tessera.operator.settings import OperatorSettings

    values = tmp_path / "clients.yaml"
    values.write_text("workers:\n  serveClients:\n    - namespaceSelector: {matchLabels: {team: web}}\n"
                      "  metricsClients: []\n")
    settings = OperatorSettings.from_env(operator_env(render(str(values))))
    assert settings.serve_clients == [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]
    assert settings.metrics_clients == []
    assert "TESSERA_SERVE_CLIENTS" not in operator_env(render())
