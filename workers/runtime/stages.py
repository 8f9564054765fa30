"""What one stage call does, by kind: the code a stage replica runs (no Ray here, so it is testable alone).

- an ``implementation`` (``module:function``) is called with the call's :class:`StageContext`,
  whatever the kind;
- ``llm``: the sandboxed Jinja2 ``llm.system`` / ``llm.prompt`` sent to the stage's model through
  ``ctx.llm`` (no ``llm`` block: the request's input is the prompt); the output is the text;
- ``tool``: an HTTP call (``tool.http``: method, URL, headers and body templates) limited to the
  stage's ``timeoutSeconds``; the output is the JSON (or text) answer;
- ``sql``: the rendered ``sql.query`` on ``sql.database`` in the read-only, time-limited sandbox;
  the output is ``{"columns", "rows", "truncated"}``;
- ``retrieval``: the rendered ``retrieval.query`` searched in the stage's collection; the output is
  the list of hits.

Templates are Jinja2's sandboxed environment (a template comes from whoever writes the CR) and see
``input``, ``outputs`` (dependency name -> output), ``params``, ``iteration`` and ``previous``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from tessera.api.workflow import Stage, StageKind
from tessera.workers.runtime.context import LLMClient, StageContext, StageError

TokenSink = Callable[[str], Awaitable[None]]
_TEMPLATES = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def load_implementation(path: str) -> Callable[[StageContext], Any]:
    """The callable ``module:function`` names; ValueError naming what is missing."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"implementation: cannot import {module_name!r} ({err})") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(f"implementation: {module_name!r} has no callable {attr!r}")
    return function


class Template:
    def __init__(self, field: str, source: str):
        self.field = field
        self.template = _TEMPLATES.from_string(source)

    def render(self, ctx: StageContext) -> str:
        try:
            return self.template.render(input=ctx.input, outputs=ctx.outputs, params=ctx.params,
                                        iteration=ctx.iteration, previous=ctx.previous)
        except TemplateError as err:  # undefined names, sandbox refusals
            raise StageError(f"{self.field}: {err}") from None


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class StageWorker:
    """Runs calls of one stage; ``llm`` is the model client for stages with a ``model``."""

    def __init__(self, stage: Stage, llm: LLMClient | None = None):
        self.stage = stage
        self.llm = llm
        self.implementation = load_implementation(stage.implementation) if stage.implementation else None
        self.run_kind = self._kind_runner()

    def _kind_runner(self) -> Callable[[StageContext, TokenSink | None], Awaitable[Any]]:
        stage = self.stage
        if self.implementation is not None:
            return self._run_implementation
        if stage.kind is StageKind.llm:
            call = stage.llm
            self.prompt = Template("llm.prompt", call.prompt) if call else None
            self.system = Template("llm.system", call.system) if call and call.system else None
            return self._run_llm
        if stage.kind is StageKind.tool:
            http = stage.tool.http
            self.url, self.body = Template("tool.http.url", http.url), http.body and Template("tool.http.body", http.body)
            self.headers = {name: Template(f"tool.http.headers.{name}", value) for name, value in http.headers.items()}
            return self._run_http
        if stage.kind is StageKind.sql:
            if stage.sql.query is None:
                raise ValueError("sql.query: required unless an implementation is given")
            self.query = Template("sql.query", stage.sql.query)
            return self._run_sql
        if stage.kind is StageKind.retrieval:
            self.query = Template("retrieval.query", stage.retrieval.query)
            return self._run_retrieval
        raise ValueError(f"implementation: required for {stage.kind.value} stages")

    def context(self, call: dict[str, Any]) -> StageContext:
        llm = self.llm
        if hasattr(llm, "for_priority"):  # a model deployment's client schedules by the request's priority
            llm = llm.for_priority(call.get("priority", 0))
        return StageContext(**call, llm=llm)

    async def run(self, call: dict[str, Any], on_token: TokenSink | None = None) -> Any:
        """One call, limited to the stage's ``timeoutSeconds``; ``call`` holds the StageContext fields.

        Raises on failure (the ingress retries). A synchronous implementation that overruns keeps its
        worker thread until it returns (Python cannot stop a thread); its result is dropped.
        """
        try:
            return await asyncio.wait_for(self.run_kind(self.context(call), on_token), self.stage.timeout_seconds)
        except asyncio.TimeoutError:
            raise StageError(f"timed out after {self.stage.timeout_seconds:g} s") from None

    async def _run_implementation(self, ctx: StageContext, on_token: TokenSink | None) -> Any:
        if inspect.iscoroutinefunction(self.implementation):
            return await self.implementation(ctx)
        return await asyncio.to_thread(self.implementation, ctx)

    async def _run_llm(self, ctx: StageContext, on_token: TokenSink | None) -> str:
        if ctx.llm is None:
            raise StageError(f"stage {self.stage.name!r} has no model deployment to call")
        prompt = self.prompt.render(ctx) if self.prompt else as_text(ctx.input)
        system = self.system.render(ctx) if self.system else None
        options = self.stage.llm.generation if self.stage.llm else None
        if on_token is None:
            return (await ctx.llm.generate(prompt, options, system=system)).text
        pieces = []
        async for piece in ctx.llm.stream(prompt, options, system=system):
            pieces.append(piece)
            await on_token(piece)
        return "".join(pieces)

    async def _run_http(self, ctx: StageContext, on_token: TokenSink | None) -> Any:
        import httpx

        http = self.stage.tool.http
        body = self.body.render(ctx) if self.body else None
        headers = {name: template.render(ctx) for name, template in self.headers.items()}
        url = self.url.render(ctx)
        async with httpx.AsyncClient(timeout=self.stage.timeout_seconds) as client:
            response = await client.request(http.method, url, content=body, headers=headers)
        if response.status_code >= 400:
            raise StageError(f"{http.method} {url} answered HTTP {response.status_code}")
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.text

    async def _run_sql(self, ctx: StageContext, on_token: TokenSink | None) -> dict[str, Any]:
        from tessera.workers.text2sql.sandbox import SQLError, SQLSandbox

        spec = self.stage.sql
        query = self.query.render(ctx)

        def execute():
            sandbox = SQLSandbox(spec.database, timeout_s=self.stage.timeout_seconds, max_rows=spec.max_rows)
            return sandbox.execute(query)

        try:
            result = await asyncio.to_thread(execute)
        except (SQLError, FileNotFoundError) as err:
            raise StageError(f"sql: {err}") from None
        return {"columns": result.columns, "rows": [list(row) for row in result.rows], "truncated": result.truncated}

    async def _run_retrieval(self, ctx: StageContext, on_token: TokenSink | None) -> list[dict[str, Any]]:
        from tessera.workers.retrieval import search

        return await asyncio.to_thread(search, self.stage.retrieval, self.query.render(ctx))
