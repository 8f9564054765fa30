"""What the operator writes is what the workers run.

The real operator reconciles the Text-to-SQL example, applied with the real ``kubectl`` against the
kmock emulator; the test then starts the Serve application from the resulting RayService's
``serveConfigV2`` on a local Ray (hardware classes as local resources) and answers one question
through it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tessera.operator.builders import child_name
from tessera_devtools import EmulatedCluster, OperatorRun, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def kubectl_binary() -> str:
    found = shutil.which("kubectl") or str(REPO / ".tools" / "bin" / "kubectl")
    if not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: run `bash .ci/tools.sh .tools` (make test does)")
        pytest.skip("kubectl is not installed (bash .ci/tools.sh .tools)")
    return found


def kubectl(cluster: EmulatedCluster, *args: str) -> str:
    result = subprocess.run([kubectl_binary(), "--kubeconfig", str(cluster.kubeconfig), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def rayservice_of_example(tmp_path: Path) -> dict:
    """Apply the inventory and the Text-to-SQL workflow with kubectl; return the RayService the operator made."""
    with EmulatedCluster(nodes=EmulatedCluster.example_nodes(), workdir=tmp_path) as cluster, OperatorRun(cluster):
        inventory = EXAMPLES / "inventory"
        for name in ("hardware-classes.yaml", "model-profiles.yaml", "power-budget.yaml"):
            kubectl(cluster, "apply", "--validate=false", "-f", str(inventory / name))
        kubectl(cluster, "apply", "--validate=false", "-f", str(EXAMPLES / "workflows" / "text2sql.yaml"))
        phase = wait_for(lambda: kubectl(cluster, "get", "agentworkflow", "text2sql", "-o",
                                         "jsonpath={.status.phase}") in ("Deploying", "Running"),
                         timeout=60, what="the workflow to be deployed")
        assert phase
        name = child_name("text2sql")
        return wait_for(lambda: cluster.get("ray.io/v1", "rayservices", name, "default"), timeout=30,
                        what="the RayService child")


def test_the_operators_rayservice_answers_a_question(tmp_path, serve_http_port):
    from ray import serve

    from tessera.workers.local import build_application, localize_application
    from tessera.workers.text2sql.app import default_db_dirs
    from tessera.workers.text2sql.sandbox import SQLSandbox, result_key

    rayservice = rayservice_of_example(tmp_path)
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (written,) = config["applications"]
    assert written["import_path"] == "tessera.workers.text2sql.app:build_app"
    planned = written["args"]["stages"]
    worker_groups = {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    for stage in planned.values():  # every stage asks for its class's resource, which its worker group offers
        (resource,) = stage["rayActorOptions"]["resources"]
        assert resource == f"tessera.dev/{stage['hardwareClass']}"
        assert any(resource in g["rayStartParams"].get("resources", "") for g in worker_groups.values())

    application = localize_application(written)
    assert application["args"]["stageMap"] == written["args"]["stageMap"]
    handle = serve.run(build_application(application), name=application["name"],
                       route_prefix=application["route_prefix"])
    try:
        answer = handle.answer.remote("How many customers are there?", 2, 300).result(timeout_s=600)
    finally:
        serve.delete(application["name"])
    db = SQLSandbox(default_db_dirs() / "store.sqlite")
    assert answer["error"] is None, answer
    assert result_key([tuple(r) for r in answer["rows"]]) == result_key(db.execute("SELECT COUNT(*) FROM customers").rows)
    assert [s["name"] for s in answer["stages"]][:3] == ["schema_linking", "candidate_generation", "execution"]
