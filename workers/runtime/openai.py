"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions`` over a model deployment, and the one
place that maps a generation request to what vLLM's OpenAI server takes.

The pydantic models here are the whole HTTP contract (requests, answers, stream chunks). A model is named
by its key in ``WorkflowAppArgs.models`` (``<model>@<class>``) or, where one class serves it, by its
ModelProfile name. Tessera's fields beyond OpenAI's are vLLM's own: ``priority`` (lower is served first,
vLLM's ``scheduling_policy: priority``), ``guided_grammar`` and ``guided_json`` (structured outputs).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.api.workflow import GenerationOptions

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
OPENAI_PATHS = (CHAT_PATH, COMPLETIONS_PATH)


class OpenAIModel(BaseModel):
    # OpenAI's field names are snake_case already; unknown fields (logprobs, n, ...) are ignored, as vLLM does.
    model_config = ConfigDict(extra="ignore")


class ChatMessage(OpenAIModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=262144)


class GenerationFields(OpenAIModel):
    model: str = Field(min_length=1, max_length=512)
    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0, le=2)
    stop: str | list[str] | None = None
    stream: bool = False
    priority: int = Field(default=0, ge=-1000, le=1000, description="vLLM's priority: lower is served first.")
    guided_grammar: str | None = Field(default=None, max_length=65536, description="EBNF the output must match.")
    guided_json: dict[str, Any] | None = Field(default=None, description="JSON schema the output must match.")

    def options(self) -> GenerationOptions:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return GenerationOptions(max_tokens=self.max_tokens, temperature=self.temperature, stop=stop,
                                 grammar=self.guided_grammar, json_schema=self.guided_json)


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)


class CompletionRequest(GenerationFields):
    prompt: str = Field(max_length=262144)


class Usage(OpenAIModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatChoice(OpenAIModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str


class CompletionChoice(OpenAIModel):
    index: int = 0
    text: str
    finish_reason: str | None = None


class ChatCompletion(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Completion(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatDelta(OpenAIModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(OpenAIModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None


class ChatCompletionChunk(OpenAIModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]


class CompletionChunk(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]


def model_request(messages: list[dict[str, str]] | None, prompt: str | None, options: GenerationOptions,
                  priority: int) -> dict[str, Any]:
    """What a model deployment's ``generate``/``stream`` take: chat messages or a raw prompt, and the options."""
    return {"messages": messages, "prompt": prompt, "options": options.model_dump(mode="json"), "priority": priority}


def vllm_body(model_id: str, request: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    """A model request as vLLM's OpenAI server takes it (chat when it has messages, else a completion).

    Urgency: Tessera's priority is higher-is-more-urgent, vLLM serves the lowest first, so it is negated.
    Structured outputs: vLLM's ``guided_grammar`` (EBNF, xgrammar's syntax) and ``guided_json``.
    """
    options = GenerationOptions.model_validate(request["options"])
    body: dict[str, Any] = {"model": model_id, "max_tokens": options.max_tokens, "temperature": options.temperature,
                            "stream": stream, "priority": -int(request.get("priority", 0))}
    if options.stop:
        body["stop"] = options.stop
    if options.grammar:
        body["guided_grammar"] = options.grammar
    if options.json_schema is not None:
        body["guided_json"] = options.json_schema
    if request.get("messages"):
        body["messages"] = request["messages"]
    else:
        body["prompt"] = request["prompt"]
    return body


# --------------------------------------------------------------------------- the HTTP side
Handle = Any  # a Ray Serve DeploymentHandle of a model deployment


def resolve_model(name: str, models: Mapping[str, Handle]) -> Handle | None:
    """A model by its key, or by its profile name where exactly one class serves it."""
    if name in models:
        return models[name]
    matches = [handle for key, handle in models.items() if key.split("@")[0] == name]
    return matches[0] if len(matches) == 1 else None


async def answer(path: str, body: bytes, models: Mapping[str, Handle]):
    """The starlette response to an OpenAI request (``path`` ends with one of ``OPENAI_PATHS``)."""
    from starlette.responses import JSONResponse, StreamingResponse

    chat = path.endswith(CHAT_PATH)
    try:
        request = (ChatCompletionRequest if chat else CompletionRequest).model_validate_json(body or b"{}")
        options = request.options()
    except ValidationError as err:
        first = err.errors()[0]
        return _error(400, f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}")
    handle = resolve_model(request.model, models)
    if handle is None:
        return _error(404, f"model: {request.model!r} is not served here (one of {', '.join(sorted(models))})")
    messages = [m.model_dump() for m in request.messages] if chat else None
    call = model_request(messages, None if chat else request.prompt, options, request.priority)
    reply_id, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
    if request.stream:
        pieces = handle.options(stream=True).stream.remote(call)
        return StreamingResponse(_events(pieces, chat, reply_id, created, request.model),
                                 media_type="text/event-stream")
    try:
        result = await handle.generate.remote(call)
    except ValueError as err:  # the engine refused the request (e.g. a grammar it cannot compile)
        return _error(400, str(err))
    usage = Usage(prompt_tokens=result.get("prompt_tokens", 0), completion_tokens=result["tokens"],
                  total_tokens=result.get("prompt_tokens", 0) + result["tokens"])
    if chat:
        reply: OpenAIModel = ChatCompletion(id=reply_id, created=created, model=request.model, usage=usage, choices=[
            ChatChoice(message=ChatMessage(role="assistant", content=result["text"]),
                       finish_reason=result["finish_reason"])])
    else:
        reply = Completion(id=reply_id, created=created, model=request.model, usage=usage, choices=[
            CompletionChoice(text=result["text"], finish_reason=result["finish_reason"])])
    return JSONResponse(reply.model_dump(mode="json", exclude_none=True))


async def _events(pieces: AsyncIterator[str], chat: bool, reply_id: str, created: int, model: str):
    """OpenAI's server-sent events: one chunk per piece of text, a closing chunk, then ``[DONE]``."""
    def chunk(text: str | None, finish: str | None) -> str:
        if chat:
            delta = ChatDelta(role="assistant" if text is None and finish is None else None, content=text)
            data: OpenAIModel = ChatCompletionChunk(id=reply_id, created=created, model=model,
                                                    choices=[ChatChunkChoice(delta=delta, finish_reason=finish)])
        else:
            data = CompletionChunk(id=reply_id, created=created, model=model,
                                   choices=[CompletionChoice(text=text or "", finish_reason=finish)])
        return f"data: {json.dumps(data.model_dump(mode='json', exclude_none=True))}\n\n"

    if chat:
        yield chunk(None, None)
    async for piece in pieces:
        yield chunk(piece, None)
    yield chunk(None, "stop")
    yield "data: [DONE]\n\n"


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)

