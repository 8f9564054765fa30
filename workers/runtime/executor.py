"""The DAG executor: one request through a workflow's stages, in plain asyncio (no Ray).

The Serve ingress wraps it (app.py) with an ``invoke`` that calls the stage deployments through
their handles; the unit tests give it local functions. Semantics (docs/runtime.md):

- a stage starts as soon as every stage it ``dependsOn`` is done, so independent branches run
  concurrently;
- ``fanOut: n`` makes n parallel calls (``ctx.fan_index``); the output is the list of their outputs;
- ``iterations: n`` makes n sequential rounds (``ctx.iteration``, ``ctx.previous``); the output is
  the last round's;
- each call is retried up to ``retries`` times (the replica limits it to ``timeoutSeconds`` once it
  runs: stages.py; the request's deadline bounds the time it waits in a queue);
- a stage that still fails fails the request with an error naming the stage and the reason; the
  stages still running for it are cancelled; other requests are unaffected;
- a stage is not started once the request's deadline has passed;
- every call carries the request's priority, its deadline and the stage's share of the time left
  (the ``sched`` dict: the fields of ``tessera.workers.scheduling.StageCall``), so the router and
  the replicas' queues order it by urgency.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tessera.api.serve import StageResult, WorkflowAppArgs, WorkflowRequest, WorkflowResponse
from tessera.api.workflow import Stage
from tessera.workers.runtime.context import StageError

TokenSink = Callable[[str], Awaitable[None]]

# Why a stage did not run: work that can no longer meet the deadline is skipped (the demo counts these apart
# from failures).
DEADLINE_PASSED = "skipped: the request's deadline had passed"


class Invoke(Protocol):
    """Runs one call of ``stage``: ``call`` holds the StageContext fields, ``sched`` the scheduling fields.

    With ``on_token`` (the final llm stage of a streamed request) the call passes each generated
    piece of text to it as it comes, and still returns the whole output.
    """

    async def __call__(self, stage: str, call: dict[str, Any], sched: dict[str, Any],
                       on_token: TokenSink | None = None) -> Any: ...


class StageFailed(Exception):
    """A stage that failed every attempt; the message names the stage and the reason."""

    def __init__(self, stage: str, reason: str, attempts: int):
        super().__init__(f"stage {stage!r} failed: {reason}")
        self.stage, self.reason, self.attempts = stage, reason, attempts


def describe(error: BaseException) -> str:
    """One line saying what went wrong in a call (no traceback: the client reads it)."""
    # Ray wraps a replica's exception; the exception itself is what the user recognises.
    cause = getattr(error, "cause", None)
    if cause is not None and cause is not error:
        return describe(cause)
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, StageError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def all_or_none(calls: list[Awaitable[Any]]) -> list[Any]:
    """The results of concurrent calls; the first failure cancels the others and is raised as it is."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class StageTimes:
    """The plan's predicted seconds of one call of each stage, and what follows each stage."""

    seconds: dict[str, float]
    # stage -> the predicted seconds of the stages on the slowest path after it (HEXGEN's remaining stages)
    downstream: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, args: WorkflowAppArgs) -> "StageTimes":
        stages = {s.name: s for s in args.spec.stages}
        # A stage's time per request: its iterations run one after another, its fan-out in parallel.
        seconds = {name: args.deployment(name).predicted_latency_ms / 1000.0 * s.iterations
                   for name, s in stages.items()}
        dependents: dict[str, list[str]] = {name: [] for name in stages}
        for stage in stages.values():
            for dep in stage.depends_on:
                dependents[dep].append(stage.name)
        downstream: dict[str, list[float]] = {}

        def path(name: str) -> list[float]:
            if name not in downstream:
                longest = max(([seconds[d], *path(d)] for d in dependents[name]), key=sum, default=[])
                downstream[name] = longest
            return downstream[name]

        for name in stages:
            path(name)
        return cls(seconds, downstream)


@dataclass
class RequestState:
    request_id: str
    input: Any
    priority: int
    arrival_s: float
    deadline_s: float
    outputs: dict[str, Any] = field(default_factory=dict)
    results: dict[str, StageResult] = field(default_factory=dict)


class WorkflowExecutor:
    """Executes requests of one workflow; ``invoke`` runs a single stage call wherever the stage lives."""

    def __init__(self, args: WorkflowAppArgs, invoke: Invoke):
        self.args = args
        self.invoke = invoke
        self.stages: dict[str, Stage] = {s.name: s for s in args.spec.stages}
        self.times = StageTimes.of(args)
        self.sink = self._sink()
        self.streamed_stage = self._streamed_stage()
        self._ids = itertools.count()

    def _sink(self) -> str | None:
        """The stage whose output is the request's: the only stage no other depends on (None if several)."""
        depended = {d for s in self.stages.values() for d in s.depends_on}
        sinks = [name for name in self.stages if name not in depended]
        return sinks[0] if len(sinks) == 1 else None

    def _streamed_stage(self) -> str | None:
        """The final llm stage: the last llm stage in the spec's order (the spec lists a stage after its deps)."""
        llm = [s.name for s in self.args.spec.stages if s.kind.value == "llm"]
        return llm[-1] if llm else None

    def new_request(self, request: WorkflowRequest, request_id: str | None = None) -> RequestState:
        now = time.time()
        deadline_ms = request.deadline_ms or self.args.deadline_ms()
        priority = self.args.spec.priority if request.priority is None else request.priority
        return RequestState(request_id or f"{self.args.workflow}-{next(self._ids)}", request.input, priority, now,
                            now + deadline_ms / 1000.0)

    async def run(self, request: WorkflowRequest, on_token: TokenSink | None = None,
                  request_id: str | None = None) -> WorkflowResponse:
        """Every stage of the DAG for one request; a failed stage ends it with ``error`` set (no raise)."""
        state = self.new_request(request, request_id)
        error = None
        try:
            await self.run_state(state, on_token)
        except StageFailed as failed:
            error = str(failed)
        return self.response(state, error)

    def response(self, state: RequestState, error: str | None) -> WorkflowResponse:
        finished = time.time()
        if self.sink is not None:
            output = state.outputs.get(self.sink)
        else:
            depended = {d for s in self.stages.values() for d in s.depends_on}
            output = {name: value for name, value in state.outputs.items() if name not in depended}
        return WorkflowResponse(
            workflow=self.args.workflow, output=output if error is None else None,
            stages=[state.results[name] for name in self.stages if name in state.results],
            latency_ms=(finished - state.arrival_s) * 1000.0, deadline_ms=(state.deadline_s - state.arrival_s) * 1000.0,
            deadline_missed=finished > state.deadline_s, priority=state.priority, error=error,
        )

    async def run_state(self, state: RequestState, on_token: TokenSink | None = None) -> None:
        """Runs the DAG, filling ``state``; raises StageFailed naming the stage that failed."""
        pending = dict(self.stages)
        running: dict[asyncio.Task, str] = {}
        try:
            while pending or running:
                for name, stage in list(pending.items()):
                    if all(dep in state.outputs for dep in stage.depends_on):
                        del pending[name]
                        sink = on_token if name == self.streamed_stage else None
                        running[asyncio.create_task(self._run_stage(state, stage, sink))] = name
                if not running:  # only reachable with a cycle, which validation refuses
                    raise StageFailed(next(iter(pending)), "its dependencies never finish", 0)
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = running.pop(task)
                    state.outputs[name] = task.result()  # raises StageFailed: the request fails
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _run_stage(self, state: RequestState, stage: Stage, on_token: TokenSink | None) -> Any:
        started = time.time()
        attempts = [0]
        result = StageResult(name=stage.name, started_ms=(started - state.arrival_s) * 1000.0, ms=0.0,
                             attempts=0, hardware_class=self.args.deployment(stage.name).hardware_class)
        state.results[stage.name] = result
        try:
            if started > state.deadline_s:
                raise StageFailed(stage.name, DEADLINE_PASSED, 0)
            inputs = {dep: state.outputs[dep] for dep in stage.depends_on}
            previous = None
            for iteration in range(stage.iterations):
                calls = [self._call(state, stage, inputs, iteration, fan, previous, attempts,
                                    on_token if fan == 0 and iteration == stage.iterations - 1 else None)
                         for fan in range(stage.fan_out)]
                outputs = await all_or_none(calls)
                previous = outputs if stage.fan_out > 1 else outputs[0]
            result.output = previous
            return previous
        except StageFailed as failed:
            result.error = failed.reason
            raise
        finally:
            result.ms = (time.time() - started) * 1000.0
            result.attempts = attempts[0]

    def sched(self, state: RequestState, stage: Stage, iteration: int) -> dict[str, Any]:
        """The StageCall fields of one call: HEXGEN's per-stage share of the time left (docs/runtime.md)."""
        one_call_s = self.args.deployment(stage.name).predicted_latency_ms / 1000.0
        deployment = self.args.deployment(stage.name)
        return {
            "request_id": state.request_id, "stage": stage.name, "priority": state.priority,
            "arrival_s": state.arrival_s, "deadline_s": state.deadline_s, "stage_started_s": time.time(),
            "est_seconds_by_class": {deployment.hardware_class: one_call_s},
            "stage_mean_s": one_call_s * (stage.iterations - iteration),
            "remaining_stage_means_s": self.times.downstream.get(stage.name, []),
        }

    async def _call(self, state: RequestState, stage: Stage, inputs: dict[str, Any], iteration: int, fan: int,
                    previous: Any, attempts: list[int], on_token: TokenSink | None) -> Any:
        call = {"stage": stage.name, "input": state.input, "outputs": inputs, "params": stage.params,
                "priority": state.priority, "deadline_s": state.deadline_s, "fan_index": fan,
                "iteration": iteration, "previous": previous}
        reason = "not run"
        for _attempt in range(stage.retries + 1):
            if time.time() > state.deadline_s:
                late = f"{DEADLINE_PASSED} (last attempt: {reason})" if attempts[0] else DEADLINE_PASSED
                raise StageFailed(stage.name, late, attempts[0])
            attempts[0] += 1
            try:
                return await self.invoke(stage.name, call, self.sched(state, stage, iteration), on_token)
            except Exception as error:  # any failure of the call is retried, then names the stage
                reason = describe(error)
        suffix = f" (after {attempts[0]} attempts)" if stage.retries else ""
        raise StageFailed(stage.name, reason + suffix, attempts[0])
