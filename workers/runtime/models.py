"""The model deployments llm stages call, and ``ctx.llm``: a client of one of them.

Every llm stage that names the same model shares one model deployment (one handle, passed to the
stage's replicas). Where the operator wrote ``WorkflowAppArgs.models`` and a stage's
``modelDeployment`` key, that entry says where the model runs; otherwise the model deployment takes
the placement of the first llm stage that names the model. Either way it is ``ModelServer``: Tessera's
CPU engine with SmolLM2 from its wheel, decoding under an EBNF grammar when a call gives one (xgrammar),
until the plan's model deployments replace it; they only need to answer ``generate`` and ``stream``
with the same request dict (``ModelClient.request``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from tessera.api.serve import WorkflowAppArgs
from tessera.api.workflow import GenerationOptions, Stage, StageKind
from tessera.workers.runtime.context import Completion


def model_key(args: WorkflowAppArgs, stage: Stage) -> str:
    """Which model deployment an llm stage calls: the plan's key when the operator wrote one, else its model."""
    key = args.deployment(stage.name).model_deployment
    return key if key and key in args.models else str(stage.model)


@serve.deployment
class ModelServer:
    """One model: generation requests from ``ModelClient`` (chat messages, options, an optional grammar)."""

    def __init__(self, model: str):
        from tessera.workers.llm.engine import LLMEngine

        self.model = model
        self.engine = LLMEngine.load_default()

    def _arguments(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        kwargs = {"max_new_tokens": request["max_new_tokens"], "temperature": request["temperature"],
                  "stop": request["stop"]}
        if request.get("grammar"):
            from tessera.workers.text2sql.grammar import GrammarLogitsProcessor

            kwargs["logits_processor"] = GrammarLogitsProcessor(self.engine.tokenizer, request["grammar"])
        return self.engine.chat_prompt(request["messages"]), kwargs

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        prompt, kwargs = self._arguments(request)
        result = await asyncio.to_thread(self.engine.generate, prompt, **kwargs)
        return {"text": result.text, "tokens": len(result.token_ids), "finish_reason": result.finish_reason}

    def stream(self, request: dict[str, Any]):
        """Text pieces as they are decided (call with ``handle.options(stream=True)``)."""
        prompt, kwargs = self._arguments(request)
        yield from self.engine.stream(prompt, **kwargs)


def bind_model_deployments(args: WorkflowAppArgs) -> dict[str, Any]:
    """One bound model deployment per key that an llm stage calls."""
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
        bound[key] = ModelServer.options(**options).bind(planned.model if planned else key)
    return bound


class ModelClient:
    """``ctx.llm``: generation on a model deployment, through its handle."""

    def __init__(self, handle):
        self.handle = handle

    @staticmethod
    def request(prompt: str, options: GenerationOptions | None, system: str | None, overrides: dict[str, Any]) -> dict:
        chosen = GenerationOptions.model_validate({**(options or GenerationOptions()).model_dump(), **overrides})
        if chosen.json_schema:
            raise ValueError("llm.generation.jsonSchema: this model deployment decodes under an EBNF grammar only")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return {"messages": messages, "max_new_tokens": chosen.max_tokens, "temperature": chosen.temperature,
                "stop": chosen.stop or None, "grammar": chosen.grammar}

    async def generate(self, prompt: str, options: GenerationOptions | None = None, *,
                       system: str | None = None, **overrides: Any) -> Completion:
        result = await self.handle.generate.remote(self.request(prompt, options, system, overrides))
        return Completion(result["text"], result["tokens"], result["finish_reason"])

    async def stream(self, prompt: str, options: GenerationOptions | None = None, *,
                     system: str | None = None, **overrides: Any) -> AsyncIterator[str]:
        async for piece in self.handle.options(stream=True).stream.remote(self.request(prompt, options, system, overrides)):
            yield piece
