"""`tessera operator` as a process: settings from the environment, /metrics, the admission webhook."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request

from tessera_devtools import wait_for

from .conftest import deployed_phase, wait_status, workflow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read().decode()
    except OSError:
        return None


def review(obj, uid):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "operation": "CREATE", "namespace": "default", "name": obj["metadata"]["name"],
        "kind": {"group": "tessera.dev", "version": "v1alpha1", "kind": "AgentWorkflow"},
        "resource": {"group": "tessera.dev", "version": "v1alpha1", "resource": "agentworkflows"},
        "userInfo": {"username": "tester"}, "object": obj, "dryRun": False}}


def test_operator_process_serves_metrics_and_the_admission_webhook(cluster, tmp_path):
    metrics_port, webhook_port = free_port(), free_port()
    env = {**os.environ, "TESSERA_WEBHOOK_PORT": str(webhook_port), "TESSERA_WEBHOOK_INSECURE": "true",
           "TESSERA_METRICS_PORT": str(metrics_port)}
    log = (tmp_path / "operator.log").open("w")
    process = subprocess.Popen([sys.executable, "-P", "-m", "tessera.cli.main", "operator", "--kubeconfig",
                                str(cluster.kubeconfig), "--standalone", "--all-namespaces"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        cluster.create(workflow("qa"))
        wait_status(cluster, "qa", deployed_phase, timeout=60)
        text = wait_for(lambda: http("GET", f"http://127.0.0.1:{metrics_port}/metrics"), 30, what="/metrics")
        assert 'tessera_operator_reconciles_total{outcome="planned"}' in text
        assert 'tessera_workflow_planned_usd_per_hour{namespace="default",workflow="qa"}' in text
        assert 'tessera_operator_workflows{phase="Deploying"} 1.0' in text
        assert "tessera_planner_solve_duration_seconds_count" in text
        assert 'tessera_power_budget_provisioned_watts{budget="gpu-rows"} 40000.0' in text
        planned = [line for line in text.splitlines() if line.startswith('tessera_power_budget_planned_watts{budget="gpu-rows"}')]
        assert planned and float(planned[0].split()[-1]) > 0

        bad = workflow("broken")
        bad["spec"]["stages"][1]["dependsOn"] = ["nowhere"]
        url = f"http://127.0.0.1:{webhook_port}/validate-agentworkflow"
        answer = json.loads(wait_for(lambda: http("POST", url, review(bad, "u1")), 30, what="the webhook"))
        response = answer["response"]
        assert response["uid"] == "u1" and response["allowed"] is False
        assert "spec.stages[1].dependsOn[0]: unknown stage 'nowhere'" in response["status"]["message"]
        assert json.loads(http("POST", url, review(workflow("fine"), "u2")))["response"]["allowed"] is True
    finally:
        process.terminate()
        process.wait(30)
        log.close()
    lines = (tmp_path / "operator.log").read_text().splitlines()
    # a timestamp, the level and the object: "[2026-01-01 10:00:00,123] kopf.objects [INFO    ] [default/qa] ..."
    assert any(re.match(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\] \S+ +\[INFO +\] \[default/qa\] ", line)
               for line in lines), "\n".join(lines[:40])
    assert not [line for line in lines if "succeeded." in line and "Handler '" in line]  # DEBUG, not INFO


def test_without_peering_the_operator_says_what_it_waits_for(cluster, tmp_path):
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-P", "-m", "tessera.cli.main", "operator", "--kubeconfig",
                                    str(cluster.kubeconfig), "--all-namespaces", "--metrics-port", "0"],
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "waiting for the peering object ClusterKopfPeering tessera" in log_path.read_text(), 60,
                     what="the peering warning")
        finally:
            process.terminate()
            process.wait(30)


def test_the_images_command_runs_under_kopfs_own_runner(cluster, monkeypatch):
    """`kopf run -m tessera.operator.main` as the image runs it (liveness and /metrics both on), settings from
    TESSERA_* variables, through kopf's test runner."""
    from kopf.testing import KopfRunner

    liveness, metrics = free_port(), free_port()
    monkeypatch.setenv("TESSERA_KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("TESSERA_METRICS_PORT", str(metrics))
    args = ["run", "-m", "tessera.operator.main", "--all-namespaces", "--standalone",
            f"--liveness=http://127.0.0.1:{liveness}/healthz"]
    with KopfRunner(args, timeout=60) as runner:
        cluster.create(workflow("qa"))
        wait_status(cluster, "qa", deployed_phase, timeout=60)
        assert wait_for(lambda: http("GET", f"http://127.0.0.1:{liveness}/healthz"), 30, what="/healthz")
        assert "tessera_operator_reconciles_total" in wait_for(
            lambda: http("GET", f"http://127.0.0.1:{metrics}/metrics"), 30, what="/metrics")
    assert runner.exit_code == 0 and runner.exception is None
