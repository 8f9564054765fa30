"""The admission webhook's HTTP front: malformed AdmissionReviews get 400 naming the field, good ones kopf's answer.

The requests go over HTTP to the real aiohttp route of ``AdmissionServer`` and on to kopf's own admission code
(with our validating handler registered), as the API server's would.
"""

from __future__ import annotations

import asyncio
import functools
import json

import aiohttp
import aiohttp.test_utils
import aiohttp.web
import kopf
import pytest
from kopf._cogs.structs import references
from kopf._core.engines.admission import serve_admission_request
from kopf._core.engines.indexing import OperatorIndexers
from kopf._core.reactor.inventory import ResourceMemories

from tessera.operator.webhook import AdmissionServer, register

from .conftest import workflow
from .test_operator_process import review

AGENTWORKFLOWS = references.Resource(group="tessera.dev", version="v1alpha1", plural="agentworkflows",
                                     kind="AgentWorkflow", namespaced=True, verbs=["list", "watch", "patch"])


def good() -> dict:
    return review(workflow("fine"), "u1")


def without(path: str) -> dict:
    body = good()
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    del node[last]
    return body


MALFORMED = {
    "a list": [good()],
    "no request": without("request"),
    "a non-dict request": {**good(), "request": "CREATE"},
    "a null request": {**good(), "request": None},
    "no object": without("request.object"),
    "no userInfo": without("request.userInfo"),
    "no resource": without("request.resource"),
    "a resource that is a string": {**good(), "request": {**good()["request"], "resource": "agentworkflows"}},
    "the wrong kind": {**good(), "kind": "Pod"},
    "a number": 7,
}


async def post(server_class, payload: bytes) -> tuple[int, str]:
    registry = kopf.OperatorRegistry()
    register(registry)
    fn = functools.partial(
        serve_admission_request, settings=kopf.OperatorSettings(), memories=ResourceMemories(),
        memobase=kopf.Memo(), registry=registry, insights=references.Insights(webhook_resources={AGENTWORKFLOWS}),
        indices=OperatorIndexers().indices)

    async def route(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return await server_class._serve(fn, request)

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.post("/{id:.*}", route)])
    async with aiohttp.test_utils.TestClient(aiohttp.test_utils.TestServer(app)) as client:
        answer = await client.post("/validate-agentworkflow", data=payload,
                                   headers={"Content-Type": "application/json"})
        return answer.status, await answer.text()


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_review_gets_400_naming_the_field(body):
    status, text = asyncio.run(post(AdmissionServer, json.dumps(body).encode()))
    assert status == 400, text
    assert "malformed AdmissionReview" in text


@pytest.mark.parametrize("payload, named", [
    (b"{not json", "Invalid JSON"),
    (json.dumps(without("request.object")).encode(), "request.object or request.oldObject is required"),
    (json.dumps({**good(), "request": "CREATE"}).encode(), "request: Input should be an object"),
    (b"[]", "review: Input should be an object"),
])
def test_the_400_says_which_field_and_why(payload, named):
    status, text = asyncio.run(post(AdmissionServer, payload))
    assert status == 400 and named in text, text


def test_a_good_review_is_answered_by_kopf_with_our_validation():
    status, text = asyncio.run(post(AdmissionServer, json.dumps(good()).encode()))
    assert status == 200 and json.loads(text)["response"] == {"uid": "u1", "allowed": True}
    bad = workflow("broken")
    bad["spec"]["stages"][1]["dependsOn"] = ["nowhere"]
    status, text = asyncio.run(post(AdmissionServer, json.dumps(review(bad, "u2")).encode()))
    response = json.loads(text)["response"]
    assert status == 200 and response["allowed"] is False
    assert "unknown stage 'nowhere'" in response["status"]["message"]


def test_kopfs_own_server_answers_500_to_some_of_these():
    """Why AdmissionServer exists: the same requests crash kopf's handler (aiohttp answers 500)."""
    statuses = {name: asyncio.run(post(kopf.WebhookServer, json.dumps(body).encode()))[0]
                for name, body in MALFORMED.items()}
    assert {name for name, status in statuses.items() if status == 500} >= {"a list", "no request",
                                                                          "a non-dict request"}


@pytest.mark.parametrize("image, allowed", [
    (None, True),
    ("ghcr.io/my-org/workers:1.0", True),
    ("ghcr.io/my-org/sub/workers@sha256:abc", True),
    ("ghcr.io/my-org-evil/workers:1.0", False),
    ("docker.io/attacker/miner:latest", False),
])
def test_the_worker_image_allowlist_is_enforced_by_webhook_and_reconciler(image, allowed):
    from tessera.operator.reconcile import parse_workflow
    from tessera.operator.settings import OperatorSettings
    from tessera.operator.webhook import admission_problems

    settings = OperatorSettings.from_env({"TESSERA_ALLOWED_WORKER_IMAGES": "ghcr.io/my-org/*, registry.local/*"})
    assert settings.allowed_worker_images == ["ghcr.io/my-org/*", "registry.local/*"]
    body = workflow("w")
    if image:
        body["spec"]["serve"] = {"image": image}
    message = admission_problems(body, settings)
    assert (message is None) is allowed, message
    if not allowed:
        assert message.startswith("AgentWorkflow/w: spec.serve.image: image ") and "not allowed" in message
        with pytest.raises(Exception, match="spec.serve.image"):
            parse_workflow(body, settings)
    assert admission_problems(body, OperatorSettings()) is None  # no allowlist: any image


def test_the_operator_marks_a_workflow_with_a_foreign_image_invalid_and_runs_the_others(cluster):
    from tessera_devtools import OperatorRun, wait_for

    from .conftest import condition, get_rayservice, wait_status

    with OperatorRun(cluster, allowed_worker_images=["ghcr.io/my-org/*"]):
        foreign = workflow("foreign")
        foreign["spec"]["serve"] = {"image": "docker.io/attacker/miner:latest"}
        cluster.create(foreign)
        cluster.create(workflow("plain"))
        body = wait_status(cluster, "foreign", lambda b: condition(b, "Valid") and condition(b, "Valid")["status"] == "False")
        assert "spec.serve.image: image 'docker.io/attacker/miner:latest' is not allowed" in condition(body, "Valid")["message"]
        assert body["status"]["phase"] == "Invalid"
        wait_for(lambda: get_rayservice(cluster, "plain"), what="RayService plain")
        assert get_rayservice(cluster, "foreign") is None
