"""What a stage call does, by kind (no Ray): templates, SQL, HTTP tools, implementations, built-ins."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from tessera.api.serve import WorkflowAppArgs, WorkflowRequest
from tessera.api.workflow import GenerationOptions, Stage
from tessera.workers.runtime.app import AppArgsError, Ingress, RequestError, RuntimeOptions, parse_app_args
from tessera.workers.runtime.context import Completion
from tessera.workers.runtime.context import StageError
from tessera.workers.runtime.stages import StageWorker

from .factories import Recorder, app_args, http_endpoint, stage


def call(**fields):
    return {"stage": "s", "input": "hi", "outputs": {}, "params": {}, "priority": 0, "deadline_s": 1e12,
            "fan_index": 0, "iteration": 0, "previous": None, **fields}


def run(worker: StageWorker, **fields):
    return asyncio.run(worker.run(call(**fields)))


class EchoModel:
    """A model client that answers with what it was sent (the test looks at the rendered prompt)."""

    def __init__(self):
        self.sent = []

    async def generate(self, prompt, options=None, *, system=None, **overrides):
        self.sent.append((system, prompt, options))
        return Completion(f"{system}|{prompt}", 3)


def test_an_llm_stage_renders_its_templates_over_input_outputs_and_params():
    spec = Stage.model_validate({
        "name": "answer", "kind": "llm", "model": "m", "inputTokens": 1, "outputTokens": 1,
        "params": {"tone": "terse"},
        "llm": {"system": "Be {{ params.tone }}.",
                "prompt": "{% for hit in outputs.search %}[{{ hit.text }}]{% endfor %} Q: {{ input }}",
                "generation": {"maxTokens": 5}},
    })
    model = EchoModel()
    output = run(StageWorker(spec, model), outputs={"search": [{"text": "a"}, {"text": "b"}]}, params=spec.params)
    assert output == "Be terse.|[a][b] Q: hi"
    assert model.sent[0][2] == GenerationOptions(max_tokens=5)


def test_an_llm_stage_without_an_llm_block_sends_the_input_and_a_bad_template_names_its_field():
    bare = Stage.model_validate({"name": "chat", "kind": "llm", "model": "m", "inputTokens": 1, "outputTokens": 1})
    assert run(StageWorker(bare, EchoModel()), input="plain question") == "None|plain question"
    broken = Stage.model_validate({"name": "chat", "kind": "llm", "model": "m", "inputTokens": 1, "outputTokens": 1,
                                   "llm": {"prompt": "{{ outputs.missing.text }}"}})
    with pytest.raises(StageError, match="llm.prompt: .*missing"):
        run(StageWorker(broken, EchoModel()))
    sandboxed = Stage.model_validate({"name": "chat", "kind": "llm", "model": "m", "inputTokens": 1, "outputTokens": 1,
                                      "llm": {"prompt": "{{ input.__class__.__mro__ }}"}})
    with pytest.raises(StageError, match="llm.prompt"):
        run(StageWorker(sandboxed, EchoModel()))


def test_a_sql_stage_runs_its_rendered_query_read_only(tmp_path):
    db = tmp_path / "shop.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript("CREATE TABLE items(name TEXT, price REAL); INSERT INTO items VALUES ('a', 3), ('b', 9);")
    spec = Stage.model_validate({"name": "q", "kind": "sql", "measuredLatencyMs": 1, "params": {"min": 5},
                                 "sql": {"database": str(db), "query": "SELECT name FROM items WHERE price > {{ params.min }}"}})
    assert run(StageWorker(spec), params=spec.params) == {"columns": ["name"], "rows": [["b"]], "truncated": False}
    writer = spec.model_copy(update={"sql": spec.sql.model_copy(update={"query": "DELETE FROM items"})})
    with pytest.raises(StageError, match="sql: .*DELETE"):
        run(StageWorker(writer))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM items").fetchone() == (2,)


@pytest.fixture
def recording_endpoint():
    received = []

    def answer(path, headers, body):
        received.append((path, headers.get("X-Key"), body))
        return (500, {"ok": False}) if path == "/fail" else (200, {"ok": True})

    with http_endpoint(answer) as base:
        yield base, received


def test_a_tool_stage_calls_its_http_endpoint_with_rendered_url_headers_and_body(recording_endpoint):
    base, received = recording_endpoint
    spec = Stage.model_validate({"name": "t", "kind": "tool", "measuredLatencyMs": 1, "timeoutSeconds": 5, "tool": {"http": {
        "url": base + "/{{ params.path }}", "headers": {"X-Key": "{{ params.key }}"},
        "body": '{"question": {{ input | tojson }}}'}}, "params": {"path": "tickets", "key": "k1"}})
    assert run(StageWorker(spec), input='say "hi"', params=spec.params) == {"ok": True}
    assert received == [("/tickets", "k1", {"question": 'say "hi"'})]
    failing = spec.model_copy(update={"params": {"path": "fail", "key": "k"}})
    with pytest.raises(StageError, match="answered HTTP 500"):
        run(StageWorker(failing), params=failing.params)


def test_builtins_identity_and_append_jsonl(tmp_path):
    identity = Stage.model_validate({"name": "i", "kind": "transform", "measuredLatencyMs": 1,
                                     "implementation": "tessera.workers.runtime.builtins:identity"})
    assert run(StageWorker(identity), outputs={"up": [1, 2]}) == [1, 2]
    assert run(StageWorker(identity)) == "hi"
    log = tmp_path / "tickets.jsonl"
    append = Stage.model_validate({"name": "log", "kind": "tool", "measuredLatencyMs": 1, "params": {"path": str(log)},
                                   "implementation": "tessera.workers.runtime.builtins:append_jsonl"})
    for question in ("q1", "q2"):
        run(StageWorker(append), input=question, outputs={"answer": "a"}, params=append.params)
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        {"input": "q1", "outputs": {"answer": "a"}}, {"input": "q2", "outputs": {"answer": "a"}}]
    with pytest.raises(ValueError, match="params.path"):
        run(StageWorker(append))


@pytest.mark.parametrize(("change", "message"), [
    ({"workflow": ""}, "workflow: String should have at least 1 character"),
    ({"deployments": {"nope": {}}}, "deployments.nope: no stage of the workflow has this name"),
    ({"spec": {"stages": [stage("a", implementation="tessera.workers.runtime.builtins:nothing")],
               "slo": {"latencyMs": 10}}}, "spec.stages[0].implementation: 'tessera.workers.runtime.builtins' has no callable"),
    ({"spec": {"stages": [stage("a", ("ghost",))], "slo": {"latencyMs": 10}}},
     "spec.stages[0].dependsOn[0]: unknown stage 'ghost'"),
    ({"spec": {"stages": [stage("a")], "slo": {"latencyMs": 10}, "serve": {"args": {"maxQueuedRequests": 0}}}},
     "spec.serve.args.maxQueuedRequests: Input should be greater than or equal to 1"),
])
def test_bad_app_args_are_refused_naming_the_field(change, message):
    body = {**app_args(stage("a")).model_dump(by_alias=True, mode="json", exclude_none=True), **change}
    with pytest.raises(AppArgsError) as err:
        parse_app_args(body)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(("body", "status", "message"), [
    (b'{"input": "x", "deadlineMs": NaN}', 400, "deadlineMs: Input should be a finite number"),
    (b'{"input": ', 400, "Invalid JSON"),
    (b'{"input": "x", "deadlineMs": 1e999}', 400, "deadlineMs: Input should be a finite number"),
    (b'{"input": "x", "priority": 1000000}', 400, "priority: Input should be less than or equal to 1000"),
    (b'{"input": "x", "question": "typo"}', 400, "question: Extra inputs are not permitted"),
    (b'[1, 2]', 400, "Input should be an object"),
    (b'{"input": "' + b"x" * 5000 + b'"}', 413, "body: 5013 bytes exceed the limit of 4096"),
])
def test_a_bad_request_body_gets_the_status_and_the_field(body, status, message):
    ingress = Ingress(app_args(stage("a")), RuntimeOptions(max_body_bytes=4096), {})
    with pytest.raises(RequestError) as err:
        ingress.parse(body)
    assert err.value.status == status and message in str(err.value)


def test_a_good_body_parses_with_defaults():
    request = Ingress(app_args(stage("a")), RuntimeOptions(), {}).parse(b'{"input": {"q": 1}, "priority": 2}')
    assert request.input == {"q": 1} and request.priority == 2 and request.deadline_ms is None
    assert isinstance(app_args(stage("a")), WorkflowAppArgs)


def test_the_ingress_refuses_past_its_queue_limit_and_times_requests_out():
    recorder = Recorder(delay_s={"a": 0.5})

    class LocalIngress(Ingress):
        async def invoke(self, stage, call, sched, on_token=None):
            return await recorder(stage, call, sched, on_token)

    ingress = LocalIngress(app_args(stage("a")), RuntimeOptions(max_queued_requests=1, request_timeout_s=0.2), {})

    async def two_at_once():
        return await asyncio.gather(ingress.run(WorkflowRequest(input=1)), ingress.run(WorkflowRequest(input=2)),
                                    return_exceptions=True)

    first, second = asyncio.run(two_at_once())
    assert first.error == "request timed out after 0.2 s" and first.latency_ms < 400
    assert isinstance(second, RequestError) and second.status == 503 and "maxQueuedRequests" in str(second)
    assert ingress.in_flight == 0
