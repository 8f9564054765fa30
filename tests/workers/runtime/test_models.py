"""Model deployments on the worker side: which key each llm stage calls (pure), what a call carries to the
engines (priority, structured outputs), the OpenAI endpoints' contract, and one real-model run of them."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tessera.api import AgentWorkflow, HardwareClass, Plan, StagePlan
from tessera.api.model_profile import ModelProfile
from tessera.api.serve import WorkflowAppArgs
from tessera.api.workflow import GenerationOptions
from tessera.cli.documents import load
from tessera.operator.builders import build_serve_config
from tessera.workers.runtime.models import ModelClient, planned_models
from tessera.workers.runtime.openai import answer, vllm_body
from tessera_devtools import EXAMPLES

from .factories import app_args

DOCS = load([str(EXAMPLES / "inventory"), str(EXAMPLES / "workflows")])
CLASSES = {hc.metadata.name: hc for hc in DOCS.of_kind(HardwareClass)}
PROFILES = {mp.metadata.name: mp for mp in DOCS.of_kind(ModelProfile)}
TEXT2SQL = next(wf for wf in DOCS.of_kind(AgentWorkflow) if wf.metadata.name == "text2sql")


def llm(name: str, model: str = "smollm2-135m", deps: tuple[str, ...] = ()) -> dict:
    return {"name": name, "kind": "llm", "model": model, "inputTokens": 10, "outputTokens": 8, "dependsOn": list(deps),
            "llm": {"prompt": "{{ input }}", "generation": {"maxTokens": 8}}}


def operator_args(llm_classes: list[str]) -> WorkflowAppArgs:
    """text2sql's args as the operator writes them, its llm stages placed in turn on ``llm_classes``."""
    llm_stages = iter(llm_classes * 8)
    stages = {s.name: StagePlan(hardware_class=next(llm_stages) if s.kind.value == "llm" else "cpu-epyc", replicas=1,
                                predicted_latency_ms=1, watts=1, usd_per_hour=1) for s in TEXT2SQL.spec.stages}
    config = build_serve_config(TEXT2SQL, Plan(feasible=True, objective="tco", stages=stages), CLASSES, PROFILES)
    assert [app["name"] for app in config["applications"]][:2] == ["text2sql-models", "text2sql"]
    return WorkflowAppArgs.model_validate(config["applications"][1]["args"])


@pytest.mark.parametrize("llm_classes, keys", [
    (["cpu-epyc"], {"llama-3-1-70b@cpu-epyc"}),  # every llm stage on one class: one copy of the model
    (["cpu-epyc", "h100-sxm"], {"llama-3-1-70b@cpu-epyc", "llama-3-1-70b@h100-sxm"}),
])
def test_the_runtime_binds_one_model_deployment_per_planned_model_and_class(llm_classes, keys):
    args = operator_args(llm_classes)
    models = planned_models(args)
    assert set(models) == keys
    engines = {key: model.engine for key, model in models.items()}
    assert engines == {key: ("vllm" if key.endswith("h100-sxm") else "cpu") for key in keys}


def test_without_a_plan_stages_that_name_one_model_share_it():
    args = app_args(llm("a"), llm("b", deps=("a",)), llm("c", model="llama-3-1-8b", deps=("b",)))
    assert {key: m.model for key, m in planned_models(args).items()} == {
        "smollm2-135m": "smollm2-135m", "llama-3-1-8b": "llama-3-1-8b"}


def test_a_call_carries_the_requests_priority_and_its_structured_output():
    client = ModelClient(handle=None).for_priority(7)
    request = client.request("q", GenerationOptions(max_tokens=9, stop=[";"]), "sys", (), {"grammar": 'root ::= "x"'})
    assert request["priority"] == 7 and request["messages"][0] == {"role": "system", "content": "sys"}
    body = vllm_body("m@h100", request, stream=False)
    # vLLM serves the lowest priority first; Tessera's higher is more urgent
    assert body == {"model": "m@h100", "max_tokens": 9, "temperature": 0.0, "stream": False, "priority": -7,
                    "stop": [";"], "guided_grammar": 'root ::= "x"', "messages": request["messages"]}
    schema = {"type": "object", "properties": {"sql": {"type": "string"}}}
    body = vllm_body("m", {**request, "messages": None, "prompt": "p",
                           "options": GenerationOptions(json_schema=schema).model_dump()}, stream=True)
    assert body["guided_json"] == schema and body["prompt"] == "p" and "messages" not in body and body["stream"]
    with pytest.raises(ValueError, match="max_tokens"):
        client.request("q", None, None, (), {"max_tokens": 0})


def test_history_turns_sit_between_the_system_prompt_and_the_question_and_the_logprob_comes_back():
    handle = RecordingHandle()
    shot = [{"role": "user", "content": "How many rows?"}, {"role": "assistant", "content": "SELECT COUNT(*) FROM t"}]
    completion = asyncio.run(ModelClient(handle).generate("q", system="sys", history=shot))
    assert [m["role"] for m in handle.calls[0]["messages"]] == ["system", "user", "assistant", "user"]
    assert handle.calls[0]["messages"][1:3] == shot and handle.calls[0]["messages"][3]["content"] == "q"
    assert completion.mean_logprob == -0.25 and completion.text == "SELECT 1"


class RecordingHandle:
    """A model deployment's handle answering from a list (the real one is tested below)."""

    def __init__(self):
        self.calls: list[dict] = []
        self.generate = self

    def remote(self, call: dict):
        self.calls.append(call)

        async def result():
            return {"text": "SELECT 1", "tokens": 3, "finish_reason": "stop", "prompt_tokens": 5, "mean_logprob": -0.25}
        return result()


@pytest.mark.parametrize("path, body, status, problem", [
    ("/wf/v1/chat/completions", {"model": "m@cpu", "messages": []}, 400, "messages"),
    ("/wf/v1/chat/completions", {"model": "m@cpu", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ("/wf/v1/completions", {"model": "m@cpu", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/wf/v1/completions", {"model": "other", "prompt": "x"}, 404, "model"),
])
def test_openai_requests_name_the_field_at_fault(path, body, status, problem):
    response = asyncio.run(answer(path, json.dumps(body).encode(), {"m@cpu": RecordingHandle()}))
    assert response.status_code == status
    assert json.loads(response.body)["error"]["message"].startswith(problem)


def test_openai_chat_answer_and_the_call_it_makes():
    handle = RecordingHandle()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "priority": 3, "stop": ";",
            "guided_grammar": 'root ::= "SELECT 1"', "logprobs": False}
    response = asyncio.run(answer("/wf/v1/chat/completions", json.dumps(body).encode(), {"m@cpu": handle}))
    reply = json.loads(response.body)
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"] == "SELECT 1"
    assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    [call] = handle.calls
    assert call["priority"] == 3 and call["options"]["stop"] == [";"] and call["options"]["grammar"]


def test_openai_endpoints_of_a_workflow_answer_from_its_one_model_deployment(serve_http_port):
    """The real model: two llm stages share one deployment, in the models application; chat, completion and a
    stream answer under the workflow's route, and the workflow's runtime calls the same deployment."""
    from ray import serve

    from tessera.api.serve import build_applications
    from tessera.api.workflow import DEFAULT_SERVE_IMPORT_PATH
    from tessera.workers.local import serve_applications

    args = app_args(llm("a"), llm("b", deps=("a",)))
    args.workflow = "wf"
    applications = build_applications(args, DEFAULT_SERVE_IMPORT_PATH)
    assert [app["name"] for app in applications] == ["wf-models", "wf"]
    serve_applications(applications, http=True, localize=False)
    try:
        status = serve.status().applications
        assert [name for name in status["wf-models"].deployments if name.startswith("model-")] == ["model-smollm2-135m"]
        assert not [name for name in status["wf"].deployments if name.startswith("model-")]
        base = f"http://127.0.0.1:{serve_http_port}/wf/v1"
        with httpx.Client(timeout=300) as http:
            chat = http.post(f"{base}/chat/completions", json={
                "model": "smollm2-135m", "max_tokens": 6, "messages": [{"role": "user", "content": "Say yes."}]})
            assert chat.status_code == 200, chat.text
            assert chat.json()["choices"][0]["message"]["content"].strip()
            constrained = http.post(f"{base}/completions", json={
                "model": "smollm2-135m", "prompt": "The answer is", "max_tokens": 8,
                "guided_grammar": 'root ::= " yes" | " no"'})
            assert constrained.json()["choices"][0]["text"] in (" yes", " no")
            with http.stream("POST", f"{base}/completions", json={
                    "model": "smollm2-135m", "prompt": "One, two,", "max_tokens": 6, "stream": True}) as stream:
                events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            text = "".join(json.loads(event)["choices"][0]["text"] for event in events[:-1])
            assert text.strip()
            workflow = http.post(f"http://127.0.0.1:{serve_http_port}/wf", json={"input": "Say hi."})
            assert workflow.status_code == 200 and not workflow.json().get("error"), workflow.text
    finally:
        for application in applications:
            serve.delete(application["name"])
