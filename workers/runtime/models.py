"""The model deployments llm stages call, and ``ctx.llm``: a client of one of them.

Every llm stage that names the same model shares one model deployment (one handle, passed to the
stage's replicas). Where the operator wrote ``WorkflowAppArgs.models`` and a stage's
``modelDeployment`` key, that entry says where the model runs; otherwise the model deployment takes
the placement of the first llm stage that names the model. Either way the model is Tessera's CPU
engine behind ``tessera.workers.llm.serve.LLMServer`` (SmolLM2 from its wheel) until the model
deployments of the plan replace it: they only need to answer ``generate`` and ``stream`` the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from tessera.api.serve import WorkflowAppArgs
from tessera.api.workflow import GenerationOptions, Stage, StageKind
from tessera.workers.runtime.context import Completion


def model_key(args: WorkflowAppArgs, stage: Stage) -> str:
    """Which model deployment an llm stage calls: the plan's key when the operator wrote one, else its model."""
    key = args.deployment(stage.name).model_deployment
    return key if key and key in args.models else str(stage.model)


def bind_model_deployments(args: WorkflowAppArgs) -> dict[str, Any]:
    """One bound model deployment per key that an llm stage calls."""
    from tessera.workers.llm.serve import LLMServer, LLMServerConfig

    bound: dict[str, Any] = {}
    for stage in args.spec.stages:
        if stage.kind is not StageKind.llm:
            continue
        key = model_key(args, stage)
        if key in bound:
            continue
        planned = args.models.get(key)
        where = planned or args.deployment(stage.name)
        options = {"name": f"model-{key}"[:60], "num_replicas": where.replicas,
                   "ray_actor_options": where.ray_actor_options or {"num_cpus": 1},
                   "max_ongoing_requests": 64}
        bound[key] = LLMServer.options(**options).bind(LLMServerConfig(model_path=None))
    return bound


class ModelClient:
    """``ctx.llm``: generation on a model deployment, through its handle."""

    def __init__(self, handle):
        self.handle = handle

    @staticmethod
    def request(prompt: str, options: GenerationOptions | None, system: str | None, overrides: dict[str, Any]) -> dict:
        chosen = (options or GenerationOptions()).model_copy(update=overrides)
        if chosen.grammar or chosen.json_schema:
            raise ValueError("llm.generation: grammar and jsonSchema need a model deployment with structured outputs")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return {"messages": messages, "max_new_tokens": chosen.max_tokens, "temperature": chosen.temperature,
                "stop": chosen.stop or None}

    async def generate(self, prompt: str, options: GenerationOptions | None = None, *,
                       system: str | None = None, **overrides: Any) -> Completion:
        result = await self.handle.generate.remote(self.request(prompt, options, system, overrides))
        return Completion(result["text"], len(result["token_ids"]), result["finish_reason"])

    async def stream(self, prompt: str, options: GenerationOptions | None = None, *,
                     system: str | None = None, **overrides: Any) -> AsyncIterator[str]:
        async for piece in self.handle.options(stream=True).stream.remote(self.request(prompt, options, system, overrides)):
            yield piece
