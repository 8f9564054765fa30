"""The runtime's Serve application on the session's local Ray, with trivial stages (no model)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .factories import app_args, http_endpoint, stage

pytestmark = pytest.mark.ray


@pytest.fixture
def slow_endpoint():
    """An HTTP tool that takes 0.25 s per call, fails for "boom", and records the order calls arrive in."""
    order: list[str] = []

    def answer(path, headers, body):
        order.append(body["name"])
        time.sleep(0.25)
        return (500, {}) if body["name"] == "boom" else (200, {"done": body["name"]})

    with http_endpoint(answer) as base:
        yield base + "/call", order


def serve_workflow(args, name: str):
    from ray import serve

    from tessera.workers.runtime.app import build_app

    return serve.run(build_app(args.model_dump(by_alias=True, mode="json", exclude_none=True)), name=name,
                     route_prefix=f"/{name}")


def test_http_requests_run_the_dag_and_errors_name_the_field_or_the_stage(serve_http_port, slow_endpoint):
    from ray import serve

    url, _order = slow_endpoint
    tool = stage("tool", ("prepare",), kind="tool", implementation=None, timeoutSeconds=5,
                 tool={"http": {"url": url, "body": '{"name": {{ outputs.prepare | tojson }}}'}})
    args = app_args(stage("prepare"), tool, predicted_ms={"prepare": 1, "tool": 250})
    serve_workflow(args.model_copy(update={"workflow": "wf"}), "wf")
    route = f"http://127.0.0.1:{serve_http_port}/wf"
    try:
        ok = httpx.post(route, json={"input": "first", "priority": 3}, timeout=30)
        assert ok.status_code == 200, ok.text
        answer = ok.json()
        assert answer["output"] == {"done": "first"} and "error" not in answer
        assert [s["name"] for s in answer["stages"]] == ["prepare", "tool"] and answer["priority"] == 3
        bad = httpx.post(route, json={"input": "x", "deadlineMs": -1}, timeout=30)
        assert bad.status_code == 400 and bad.json() == {"error": "deadlineMs: Input should be greater than 0"}
        failed = httpx.post(route, json={"input": "boom"}, timeout=30).json()
        assert failed["error"] == "stage 'tool' failed: POST " + url + " answered HTTP 500"
        again = httpx.post(route, json={"input": "second"}, timeout=30).json()
        assert again["output"] == {"done": "second"}  # the failure did not affect the next request
    finally:
        serve.delete("wf")


@pytest.mark.parametrize(("policy", "served_at_most"), [("wb-urgency", 2), ("wb-fcfs", 5)])
def test_an_urgent_request_overtakes_queued_ones_in_the_replicas_queue(serve_http_port, slow_endpoint, policy,
                                                                       served_at_most):
    from ray import serve

    url, order = slow_endpoint
    tool = stage("tool", kind="tool", implementation=None, timeoutSeconds=30,
                 tool={"http": {"url": url, "body": '{"name": {{ input | tojson }}}'}})
    args = app_args(tool, predicted_ms={"tool": 250}, serve={"policy": policy}).model_copy(update={"workflow": "queue"})
    args.deployments["tool"] = args.deployment("tool").model_copy(update={"max_ongoing_requests": 1})
    handle = serve_workflow(args, "queue")
    try:
        with ThreadPoolExecutor(8) as pool:
            relaxed = [pool.submit(lambda i=i: handle.answer.remote({"input": f"batch-{i}", "priority": 0,
                                                                      "deadlineMs": 60_000}).result())
                       for i in range(5)]
            time.sleep(0.4)  # batch-0 runs, the rest wait in the replica's queue
            urgent = handle.answer.remote({"input": "urgent", "priority": 2, "deadlineMs": 2_000}).result()
            assert all("error" not in f.result() for f in relaxed)
        assert urgent["output"] == {"done": "urgent"}
        assert order.index("urgent") <= served_at_most, order
        if policy == "wb-fcfs":
            assert order.index("urgent") == 5, order  # first come, first served: after every queued one
    finally:
        serve.delete("queue")
