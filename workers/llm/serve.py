"""Ray Serve deployments of the LLM engine.

``build_app(config)`` binds an ``LLMServer`` (the target model) and, when
``config.draft_deployment`` is set, a ``DraftServer`` that drafts on other resources
(Dovetail-style: the draft on one device class, the target verifying on another). The
resources of both come from the config, which the planner's plan fills in.

    from ray import serve
    from tessera.workers.llm.serve import LLMServerConfig, build_app
    handle = serve.run(build_app(LLMServerConfig(speculative={"method": "draft_head_ngram"})))
    handle.generate.remote({"prompt": "...", "max_new_tokens": 64}).result()
"""

from __future__ import annotations

import collections
import threading
import uuid
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from tessera.workers.llm.specdec import SpecDecConfig
from tessera.workers.torch_thread import on_torch_thread_async, run_on_torch_thread


class LLMServerConfig(BaseModel):
    """One LLM deployment: the model, its resources and how it decodes speculatively."""

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(None, description="local HF directory or .gguf; default: SmolLM2-135M-Instruct")
    device: str = Field("cpu", description="torch device of the target (and of a colocated draft)")
    threads: int | None = Field(2, ge=1, description="torch CPU threads per replica")
    speculative: SpecDecConfig | None = Field(None, description="decode greedy requests speculatively")
    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(8, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1},
                                              description="resources of each target replica")
    draft_deployment: bool = Field(False, description="run the draft as its own deployment")
    draft_device: str = Field("cpu", description="torch device of the draft deployment")
    draft_ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1},
                                                    description="resources of the draft deployment")


class GenerateRequest(BaseModel):
    """One request: a raw ``prompt`` or chat ``messages`` (the chat template is applied)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    max_new_tokens: int = 128
    stop: list[str] | None = None
    temperature: float = 0.0
    speculative: bool = Field(True, description="use the deployment's speculative decoding, if it has one")


def _load_engine(model_path: str | None, device: str, threads: int | None):
    from tessera.workers.llm.engine import LLMEngine

    if model_path is None:
        return LLMEngine.load_default(device=device, threads=threads)
    return LLMEngine.load(model_path, device=device, threads=threads)


@serve.deployment
class DraftServer:
    """Drafts tokens for an ``LLMServer`` that runs elsewhere; one draft session per request."""

    MAX_SESSIONS = 64

    def __init__(self, config: LLMServerConfig):
        from tessera.workers.llm.drafters import NgramDrafter
        from tessera.workers.llm.specdec import drafter_for

        spec = config.speculative
        if spec is None:
            raise ValueError("speculative: a draft deployment needs a speculative-decoding config")
        if spec.method == "ngram":  # needs no model weights
            self.drafter = NgramDrafter(spec.ngram_max, spec.ngram_min)
        else:
            engine = _load_engine(config.model_path, config.draft_device, config.threads)
            self.drafter = drafter_for(engine, spec)
        self.device = config.draft_device
        self.sessions: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.lock = threading.Lock()

    def start(self, session_id: str, prompt_ids: list[int]) -> None:
        session = run_on_torch_thread(self.drafter.start, prompt_ids)
        with self.lock:
            self.sessions[session_id] = session
            while len(self.sessions) > self.MAX_SESSIONS:  # sessions whose target never closed them
                self.sessions.popitem(last=False)[1].close()

    def propose(self, session_id: str, ids: list[int], feature: list[float], k: int, threshold: float) -> list[int]:
        import torch

        session = self.sessions.get(session_id)
        if session is None:
            raise KeyError(f"draft session {session_id} is unknown or expired")
        # On the torch thread: Serve calls these methods from its own threads (workers/torch_thread.py says why).
        return run_on_torch_thread(session.propose, ids, torch.tensor(feature, device=self.device), k, threshold)

    def close(self, session_id: str) -> None:
        with self.lock:
            session = self.sessions.pop(session_id, None)
        if session is not None:
            session.close()


class RemoteDrafter:
    """A drafter whose work happens in a ``DraftServer`` deployment (called from the engine's thread)."""

    def __init__(self, handle):
        self.handle = handle

    def start(self, prompt_ids: list[int]) -> "RemoteDraftSession":
        session_id = uuid.uuid4().hex
        self.handle.start.remote(session_id, prompt_ids).result()
        return RemoteDraftSession(self.handle, session_id)


class RemoteDraftSession:
    def __init__(self, handle, session_id: str):
        self.handle, self.session_id = handle, session_id

    def propose(self, ids: list[int], feature, k: int, threshold: float) -> list[int]:
        return self.handle.propose.remote(self.session_id, ids, feature.float().cpu().tolist(), k, threshold).result()

    def close(self) -> None:
        self.handle.close.remote(self.session_id)


@serve.deployment
class LLMServer:
    """The target model; verifies drafts locally or from a ``DraftServer``."""

    def __init__(self, config: LLMServerConfig, draft_handle=None):
        self.config = config
        self.engine = _load_engine(config.model_path, config.device, config.threads)
        if draft_handle is not None and config.speculative is not None:
            self.engine.set_drafter(config.speculative, RemoteDrafter(draft_handle))

    def _arguments(self, request: dict[str, Any] | GenerateRequest) -> tuple[str, dict[str, Any]]:
        from tessera.workers.llm.engine import LLMRequestError

        try:
            req = request if isinstance(request, GenerateRequest) else GenerateRequest.model_validate(request)
        except ValidationError as error:
            first = error.errors()[0]
            raise LLMRequestError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        if (req.prompt is None) == (req.messages is None):
            raise LLMRequestError("prompt: give exactly one of prompt and messages")
        prompt = req.prompt if req.prompt is not None else self.engine.chat_prompt(req.messages)
        speculative = self.config.speculative if req.speculative else None
        return prompt, dict(max_new_tokens=req.max_new_tokens, stop=req.stop, temperature=req.temperature,
                            speculative=speculative)

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """The whole answer: text, token ids, finish reason, mean log-probability and decoding stats."""
        prompt, kwargs = self._arguments(request)
        # On the torch thread, not asyncio.to_thread's pool (workers/torch_thread.py says why); the engine's
        # lock serialises forwards anyway.
        result = await on_torch_thread_async(self.engine.generate, prompt, **kwargs)
        return asdict(result)

    async def stream(self, request: dict[str, Any]):
        """Text pieces as they are decided (call with ``handle.options(stream=True)``)."""
        prompt, kwargs = self._arguments(request)
        pieces = self.engine.stream(prompt, **kwargs)
        while (piece := await on_torch_thread_async(next, pieces, None)) is not None:
            yield piece

    async def __call__(self, http_request) -> Any:
        """HTTP: POST a GenerateRequest as JSON; bad requests get status 400 and a one-line error."""
        from starlette.responses import JSONResponse

        from tessera.workers.llm.engine import LLMRequestError

        try:
            body = await http_request.json()
            return await self.generate(body)
        except (LLMRequestError, ValueError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)


def build_app(config: LLMServerConfig | dict[str, Any]):
    """The bound Serve application: the target, and the draft as its own deployment if configured."""
    config = config if isinstance(config, LLMServerConfig) else LLMServerConfig.model_validate(config)
    target = LLMServer.options(
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options=config.ray_actor_options,
    )
    if config.draft_deployment and config.speculative is not None:
        draft = DraftServer.options(ray_actor_options=config.draft_ray_actor_options).bind(config)
        return target.bind(config, draft)
    return target.bind(config)
