"""The Serve application of any AgentWorkflow: ``build_app(args)``, the default ``spec.serve.importPath``.

``args`` is :class:`tessera.api.serve.WorkflowAppArgs` as the operator writes it (the workflow's
spec and the plan per stage). The application is:

- one deployment per stage (``StageReplica``), with the plan's replicas and ``ray_actor_options``,
  routed by the workflow's policy (``spec.serve.policy``: global dispatch, ``PolicyRequestRouter``)
  and ordered in each replica by its local queue (FCFS or urgency, ``ReplicaWorkQueue``);
- the llm stages call the model deployments of the workflow's models application (models.py), by name;
- an ingress (``WorkflowIngress``) that runs the DAG for each request (executor.py) and serves
  ``POST /<workflow>`` (docs/runtime.md).

Runtime options come from ``spec.serve.args`` (:class:`RuntimeOptions`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pydantic import Field, ValidationError
from ray import serve
from ray.serve.config import RequestRouterConfig

from tessera.api import metrics as catalogue
from tessera.api.common import WireModel
from tessera.api.serve import StageDeployment, WorkflowAppArgs, WorkflowRequest, WorkflowResponse
from tessera.api.validation import workflow_problems
from tessera.api.workflow import Stage, StageKind
from tessera.workers.metrics import make_metric
from tessera.workers.runtime.executor import TokenSink, WorkflowExecutor
from tessera.workers.runtime.models import ModelClient, model_handle, model_key
from tessera.workers.runtime.routing import PolicyRequestRouter, ReplicaWorkQueue, replica_hardware_class
from tessera.workers.runtime.stages import StageWorker
from tessera.workers.scheduling import DEFAULT_ALPHA

# Ray admits this many calls per stage replica beyond the ones running: they wait in the replica's
# own (urgency) queue rather than in Ray's router, which only retries first come first served.
ADMITTED_PER_SLOT = 64


class RuntimeOptions(WireModel):
    """``spec.serve.args`` of a workflow run by the default runtime."""

    alpha: float = Field(default=DEFAULT_ALPHA, ge=0, le=1, description="Speed-vs-load weight of wb dispatch.")
    max_queued_requests: int = Field(default=256, ge=1, le=100_000,
                                     description="Requests in flight at the ingress; more get 503.")
    request_timeout_s: float | None = Field(
        default=None, gt=0, le=24 * 3600, allow_inf_nan=False,
        description="Hard limit of one request at the ingress (default: twice its deadline).")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20, description="Larger bodies get 413.")


class AppArgsError(ValueError):
    """Args the application cannot be built from; the message names the field."""


def first_problem(err: ValidationError, prefix: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{prefix}{where}: {first['msg']}" if where else f"{prefix.rstrip('.')}: {first['msg']}"


def parse_app_args(args: dict[str, Any] | WorkflowAppArgs | None) -> tuple[WorkflowAppArgs, RuntimeOptions]:
    """The validated args and runtime options; AppArgsError names the first field at fault."""
    try:
        parsed = args if isinstance(args, WorkflowAppArgs) else WorkflowAppArgs.model_validate(args or {})
    except ValidationError as err:
        raise AppArgsError(first_problem(err, "")) from None
    problems = workflow_problems(parsed.spec)
    if problems:
        raise AppArgsError(str(problems[0]))
    unknown = sorted(set(parsed.deployments) - {s.name for s in parsed.spec.stages})
    if unknown:
        raise AppArgsError(f"deployments.{unknown[0]}: no stage of the workflow has this name")
    try:
        options = RuntimeOptions.model_validate(parsed.spec.serve.args)
    except ValidationError as err:
        raise AppArgsError(first_problem(err, "spec.serve.args.")) from None
    for i, stage in enumerate(parsed.spec.stages):
        try:
            StageWorker(stage)  # imports implementations and compiles templates now, not per request
        except ValueError as err:
            raise AppArgsError(f"spec.stages[{i}].{err}") from None
    return parsed, options


async def relay(queue: asyncio.Queue, task: asyncio.Task):
    """The items ``task`` puts on ``queue``, as they come, until it is done (then it is awaited; a consumer
    that stops early cancels it)."""
    try:
        while not task.done() or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
    finally:
        if not task.done():
            task.cancel()


def priority_label(priority: int) -> str:
    """A bounded metric label for a request's priority (clients choose it: at most 21 values)."""
    return str(priority) if -9 <= priority <= 9 else ("high" if priority > 9 else "low")


@serve.deployment
class StageReplica:
    """One replica of one stage: its calls wait in the policy's queue, then run as the stage's kind says."""

    def __init__(self, workflow: str, stage: dict, deployment: dict, policy: str, model: str | None = None):
        spec, placed = Stage.model_validate(stage), StageDeployment.model_validate(deployment)
        self.worker = StageWorker(spec, ModelClient(model_handle(workflow, model)) if model is not None else None)
        replica = serve.get_replica_context().replica_id.unique_id
        hardware_class = replica_hardware_class(placed.hardware_class)
        self.work = ReplicaWorkQueue(spec.name, replica, hardware_class, policy, placed.max_ongoing_requests)
        labels = {"workflow": workflow, "stage": spec.name, "replica": replica, "hardware_class": hardware_class}
        make_metric(catalogue.WORKER_REPLICA_USD_PER_HOUR).labels(**labels).set(placed.usd_per_hour)
        make_metric(catalogue.WORKER_REPLICA_WATTS).labels(**labels).set(placed.watts)

    def record_routing_stats(self) -> dict[str, Any]:
        return self.work.routing_stats()

    async def run(self, call: dict, sched: dict | None = None) -> Any:
        return await self.work.run(sched, self.worker.run, call)

    async def run_stream(self, call: dict, sched: dict | None = None):
        """``{"token": piece}`` items as the stage generates, then ``{"output": ...}``."""
        queue: asyncio.Queue = asyncio.Queue()

        async def on_token(piece: str) -> None:
            queue.put_nowait({"token": piece})

        async def produce():
            async with self.work.slot(sched):
                return await self.worker.run(call, on_token)

        task = asyncio.create_task(produce())
        async for item in relay(queue, task):
            yield item
        yield {"output": task.result()}


class Ingress:
    """What the ingress deployment does, apart from Serve (HTTP and handle entry points, metrics)."""

    def __init__(self, args: WorkflowAppArgs, options: RuntimeOptions, stages: dict[str, Any]):
        self.args, self.options, self.stages = args, options, stages
        self.executor = WorkflowExecutor(args, self.invoke)
        self.in_flight = 0  # requests the ingress holds now; past options.max_queued_requests it refuses more
        self.workflow = args.workflow

    async def invoke(self, stage: str, call: dict, sched: dict, on_token: TokenSink | None = None) -> Any:
        handle = self.stages[stage]
        if on_token is None:
            return await handle.run.remote(call, sched=sched)
        output = None
        async for item in handle.options(stream=True).run_stream.remote(call, sched=sched):
            if "token" in item:
                await on_token(item["token"])
            else:
                output = item["output"]
        return output

    def timeout_s(self, request: WorkflowRequest) -> float:
        return self.options.request_timeout_s or 2 * (request.deadline_ms or self.args.deadline_ms()) / 1000.0

    async def run(self, request: WorkflowRequest, on_token: TokenSink | None = None) -> WorkflowResponse:
        """One request through the DAG, within the ingress's request timeout; metrics recorded."""
        if self.in_flight >= self.options.max_queued_requests:
            raise RequestError(503, f"busy: {self.in_flight} requests in flight (maxQueuedRequests)")
        state = self.executor.new_request(request)
        error = None
        self.in_flight += 1
        try:
            await asyncio.wait_for(self.executor.run_state(state, on_token), self.timeout_s(request))
        except asyncio.TimeoutError:
            error = f"request timed out after {self.timeout_s(request):g} s"
        except Exception as failed:  # StageFailed
            error = str(failed)
        finally:
            self.in_flight -= 1
        response = self.executor.response(state, error)
        self.observe(response)
        return response

    def observe(self, response: WorkflowResponse) -> None:
        labels = {"workflow": self.workflow, "priority": priority_label(response.priority)}
        outcome = "error" if response.error else ("deadline_missed" if response.deadline_missed else "ok")
        make_metric(catalogue.WORKER_REQUESTS).labels(**labels, outcome=outcome).inc()
        make_metric(catalogue.WORKER_REQUEST_SECONDS).labels(**labels).observe(response.latency_ms / 1000.0)
        if outcome == "ok":
            make_metric(catalogue.WORKER_SLO_MET).labels(**labels).inc()
        for stage in response.stages:
            make_metric(catalogue.WORKER_STAGE_SECONDS).labels(
                workflow=self.workflow, stage=stage.name, hardware_class=stage.hardware_class or "unknown",
            ).observe(stage.ms / 1000.0)
        if response.deadline_missed:
            late = next((s.name for s in response.stages if s.started_ms + s.ms > response.deadline_ms), "request")
            make_metric(catalogue.WORKER_DEADLINE_MISSES).labels(workflow=self.workflow, stage=late).inc()

    def parse(self, body: bytes) -> WorkflowRequest:
        """The request body, or RequestError with the HTTP status and the field at fault."""
        if len(body) > self.options.max_body_bytes:
            raise RequestError(413, f"body: {len(body)} bytes exceed the limit of {self.options.max_body_bytes}")
        try:
            return WorkflowRequest.model_validate_json(body or b"{}")
        except ValidationError as err:
            raise RequestError(400, first_problem(err, "")) from None


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@serve.deployment(max_ongoing_requests=1000)
class WorkflowIngress(Ingress):
    """``POST /<workflow>`` and the handle method ``run(body)``."""

    def __init__(self, args: dict, stages: dict[str, Any]):
        parsed, options = parse_app_args(args)
        super().__init__(parsed, options, stages)

    async def answer(self, body: dict) -> dict:
        """Handle entry point: a WorkflowRequest body (dict) -> a WorkflowResponse (dict, camelCase)."""
        try:
            request = WorkflowRequest.model_validate(body)
        except ValidationError as err:
            raise ValueError(first_problem(err, "")) from None
        try:
            return (await self.run(request)).to_wire()
        except RequestError as err:
            raise RuntimeError(str(err)) from None

    async def __call__(self, http_request) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        if http_request.method != "POST":
            return JSONResponse({"error": "method: POST a JSON WorkflowRequest"}, status_code=405)
        try:
            request = self.parse(await http_request.body())
            if request.stream:
                if self.in_flight >= self.options.max_queued_requests:  # checked before the stream starts
                    raise RequestError(503, f"busy: {self.in_flight} requests in flight (maxQueuedRequests)")
                return StreamingResponse(self.events(request), media_type="text/event-stream")
            return JSONResponse((await self.run(request)).to_wire(), status_code=200)
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)

    async def events(self, request: WorkflowRequest):
        """Server-sent events: ``token`` events of the final llm stage, then one ``result`` event."""
        tokens: asyncio.Queue = asyncio.Queue()

        async def on_token(piece: str) -> None:
            tokens.put_nowait(piece)

        task = asyncio.create_task(self.run(request, on_token))
        async for piece in relay(tokens, task):
            yield f"event: token\ndata: {json.dumps(piece)}\n\n"
        yield f"event: result\ndata: {json.dumps(task.result().to_wire())}\n\n"


def build_app(args: dict[str, Any] | None = None):
    """The Serve application of one workflow (``import_path: tessera.workers.runtime.app:build_app``)."""
    parsed, options = parse_app_args(args)
    policy = parsed.spec.serve.policy
    router = RequestRouterConfig(request_router_class=PolicyRequestRouter,
                                 request_router_kwargs={"policy": policy, "alpha": options.alpha},
                                 request_routing_stats_period_s=1.0)
    stages = {}
    for stage in parsed.spec.stages:
        placed = parsed.deployment(stage.name)
        actor_options = placed.ray_actor_options
        model = None
        if stage.kind is StageKind.llm:
            model = model_key(parsed, stage)
            # The model deployment holds the stage's devices; the stage's replicas render and queue.
            actor_options = {"num_cpus": 0}
        deployment = StageReplica.options(
            name=stage.name, num_replicas=placed.replicas, request_router_config=router,
            max_ongoing_requests=placed.max_ongoing_requests * ADMITTED_PER_SLOT,
            **({"ray_actor_options": actor_options} if actor_options else {}),
        )
        stages[stage.name] = deployment.bind(parsed.workflow, stage.to_wire(), placed.to_wire(), policy, model)
    # The ingress only awaits handles: it takes no CPU from the stages' replicas.
    return WorkflowIngress.options(name=f"{parsed.workflow}-ingress"[:60], ray_actor_options={"num_cpus": 0}).bind(
        parsed.model_dump(by_alias=True, mode="json", exclude_none=True), stages)
