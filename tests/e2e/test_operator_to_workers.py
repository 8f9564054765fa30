"""What the operator writes is what the workers run: a workflow with no ``spec.serve`` runs from kubectl to an answer.

The real operator reconciles ``examples/workflows/rag.yaml`` and ``chat.yaml``, applied with the
real ``kubectl`` against the kmock emulator; the test then starts each Serve application from the
resulting RayService's ``serveConfigV2`` (the default runtime, ``tessera.workers.runtime.app``) on a
local Ray, localized by ``tessera.workers.local``, and sends each one request over HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tessera.api.workflow import DEFAULT_SERVE_IMPORT_PATH
from tessera.operator.builders import child_name
from tessera_devtools import EXAMPLES, EmulatedCluster, OperatorRun, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.model]

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = {"rag-assistant": "rag.yaml", "chat": "chat.yaml"}


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


def rayservices_of_examples(tmp_path: Path) -> dict[str, dict]:
    """Apply the inventory and the workflows with kubectl; the RayService the operator made for each."""
    children = {}
    with EmulatedCluster(nodes=EmulatedCluster.example_nodes(), workdir=tmp_path) as cluster, OperatorRun(cluster):
        inventory = EXAMPLES / "inventory"
        for name in ("hardware-classes.yaml", "model-profiles.yaml", "power-budget.yaml"):
            kubectl(cluster, "apply", "--validate=false", "-f", str(inventory / name))
        for workflow, file in WORKFLOWS.items():
            kubectl(cluster, "apply", "--validate=false", "-f", str(EXAMPLES / "workflows" / file))
        for workflow in WORKFLOWS:
            assert wait_for(lambda: kubectl(cluster, "get", "agentworkflow", workflow, "-o",
                                            "jsonpath={.status.phase}") in ("Deploying", "Running"),
                            timeout=60, what=f"{workflow} to be deployed")
            children[workflow] = wait_for(lambda: cluster.get("ray.io/v1", "rayservices", child_name(workflow), "default"),
                                          timeout=30, what=f"the RayService of {workflow}")
    return children


def serve_from(rayservice: dict) -> list[dict]:
    """The workflow's applications as written (its models, then its runtime), served locally; the vLLM one
    (for GPUs) is left out: localizing puts its models on Tessera's CPU engine."""
    from tessera.operator.models import LLM_IMPORT_PATH
    from tessera.workers.local import serve_applications

    written = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    applications = [app for app in written if app["import_path"] != LLM_IMPORT_PATH]
    workflow = rayservice["metadata"]["labels"]["tessera.dev/workflow"]
    assert [app["name"] for app in applications] == [f"{workflow}-models", workflow]
    assert applications[-1]["import_path"] == DEFAULT_SERVE_IMPORT_PATH  # the workflows set no spec.serve
    serve_applications(applications, http=True)
    return applications


def delete(applications: list[dict]) -> None:
    from ray import serve

    for application in applications:
        serve.delete(application["name"])


def test_rag_and_chat_run_from_kubectl_apply_to_an_answer(tmp_path, serve_http_port):
    from tessera.workers.retrieval import default_corpus, index_files

    index_files(default_corpus(), "tessera-docs")  # what `tessera index` does, into the default local store
    children = rayservices_of_examples(tmp_path)
    tickets = Path("/tmp/tessera-tickets.jsonl")  # the rag example's file-ticket params.path
    before = tickets.read_text().count("\n") if tickets.exists() else 0

    rag = serve_from(children["rag-assistant"])
    try:
        answer = httpx.post(f"http://127.0.0.1:{serve_http_port}{rag[-1]['route_prefix']}",
                            json={"input": "What does the operator write for each workflow?", "priority": 1,
                                  "deadlineMs": 300_000},  # the first call loads the model and the collection
                            timeout=300).json()
    finally:
        delete(rag)
    assert "error" not in answer, answer
    stages = {s["name"]: s for s in answer["stages"]}
    assert list(stages) == ["retrieve", "rerank", "answer", "file-ticket"]
    assert len(stages["retrieve"]["output"]) == 6 and len(stages["rerank"]["output"]) == 2
    assert isinstance(stages["answer"]["output"], str) and stages["answer"]["output"].strip()
    assert tickets.read_text().count("\n") == before + 1
    assert answer["output"]["path"] == str(tickets)

    chat = serve_from(children["chat"])
    try:
        with httpx.stream("POST", f"http://127.0.0.1:{serve_http_port}{chat[-1]['route_prefix']}",
                          json={"input": "Name a primary colour.", "stream": True}, timeout=300) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [block for block in response.iter_text() for block in block.split("\n\n") if block.strip()]
    finally:
        delete(chat)
    kinds = [event.split("\n")[0] for event in events]
    assert kinds[-1] == "event: result" and kinds.count("event: token") >= 1
    tokens = "".join(json.loads(e.split("data: ", 1)[1]) for e in events if e.startswith("event: token"))
    result = json.loads(events[-1].split("data: ", 1)[1])
    assert result["output"] == tokens and result["priority"] == 2 and result["deadlineMs"] == 6000
