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
from tessera.operator.testing import EmulatedCluster, OperatorRun, wait_for

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
