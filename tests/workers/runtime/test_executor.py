"""The DAG executor with trivial stages: no model, no Ray."""

from __future__ import annotations

import asyncio
import time

import pytest

from .factories import Recorder, app_args, stage
from tessera.api.serve import WorkflowRequest
from tessera.workers.runtime.executor import WorkflowExecutor
from tessera.workers.runtime.stages import StageWorker


def run(executor: WorkflowExecutor, **request) -> object:
    return asyncio.run(executor.run(WorkflowRequest(**request)))


def test_stages_run_after_their_dependencies_and_see_their_outputs():
    args = app_args(stage("a"), stage("b", ("a",)), stage("c", ("b",)))
    recorder = Recorder({"a": lambda c: 1, "b": lambda c: c["outputs"]["a"] + 1, "c": lambda c: c["outputs"]["b"] * 10})
    response = run(WorkflowExecutor(args, recorder), input="x")
    assert response.error is None
    assert [c["stage"] for c in recorder.calls] == ["a", "b", "c"]
    assert response.output == 20
    assert [s.name for s in response.stages] == ["a", "b", "c"]
    assert [s.output for s in response.stages] == [1, 2, 20]
    assert all(call["call"]["input"] == "x" for call in recorder.calls)


def test_independent_branches_run_concurrently_and_the_join_waits_for_both():
    args = app_args(stage("root"), stage("left", ("root",)), stage("right", ("root",)), stage("join", ("left", "right")))
    recorder = Recorder(delay_s={"left": 0.3, "right": 0.3})
    started = time.monotonic()
    response = run(WorkflowExecutor(args, recorder))
    elapsed = time.monotonic() - started
    assert response.error is None
    (left,), (right,), (join,) = recorder.of("left"), recorder.of("right"), recorder.of("join")
    assert left["start"] < right["end"] and right["start"] < left["end"]  # they overlapped
    assert elapsed < 0.55  # 0.3 s each, together: not 0.6 s one after the other
    assert join["start"] >= max(left["end"], right["end"])
    assert join["call"]["outputs"] == {"left": {"stage": "left", "from": ["root"]},
                                       "right": {"stage": "right", "from": ["root"]}}


def test_fan_out_makes_parallel_calls_and_dependents_get_the_list():
    args = app_args(stage("fan", fanOut=4), stage("after", ("fan",)))
    recorder = Recorder({"fan": lambda c: c["fan_index"] * 2, "after": lambda c: sum(c["outputs"]["fan"])},
                        delay_s={"fan": 0.2})
    started = time.monotonic()
    response = run(WorkflowExecutor(args, recorder))
    assert time.monotonic() - started < 0.5  # four 0.2 s calls in parallel
    assert sorted(c["call"]["fan_index"] for c in recorder.of("fan")) == [0, 1, 2, 3]
    assert recorder.of("after")[0]["call"]["outputs"]["fan"] == [0, 2, 4, 6]
    assert response.output == 12


def test_iterations_run_in_sequence_and_each_sees_the_previous_output():
    args = app_args(stage("loop", iterations=3))
    recorder = Recorder({"loop": lambda c: (c["previous"] or 0) + 1}, delay_s={"loop": 0.05})
    response = run(WorkflowExecutor(args, recorder))
    calls = recorder.of("loop")
    assert [c["call"]["iteration"] for c in calls] == [0, 1, 2]
    assert [c["call"]["previous"] for c in calls] == [None, 1, 2]
    assert all(a["end"] <= b["start"] for a, b in zip(calls, calls[1:]))
    assert response.output == 3
    assert response.stages[0].attempts == 3


def test_a_call_over_its_timeout_is_retried_then_fails_the_request_naming_the_stage():
    # The stage's own worker limits each call (as in a replica); the executor retries it.
    slow = stage("slow", implementation="tessera.workers.runtime.bench:work", params={"ms": 1000},
                 timeoutSeconds=0.1, retries=2)
    args = app_args(slow, stage("after", ("slow",)))
    worker = StageWorker(args.spec.stages[0])
    recorder = Recorder({"slow": worker.run})
    started = time.monotonic()
    response = run(WorkflowExecutor(args, recorder))
    assert time.monotonic() - started < 0.8  # three attempts of 0.1 s, not of 1 s
    assert len(recorder.of("slow")) == 3
    assert not recorder.of("after")
    assert response.error == "stage 'slow' failed: timed out after 0.1 s (after 3 attempts)"
    assert response.stages[0].error.startswith("timed out") and response.stages[0].attempts == 3
    assert response.output is None


def test_a_failing_call_is_retried_until_it_succeeds():
    failures = [ValueError("flaky"), ValueError("flaky again")]

    def flaky(call):
        if failures:
            raise failures.pop(0)
        return "ok"

    response = run(WorkflowExecutor(app_args(stage("tool", retries=2)), Recorder({"tool": flaky})))
    assert response.error is None and response.output == "ok"
    assert response.stages[0].attempts == 3


def test_a_stage_that_raises_fails_its_request_and_cancels_its_siblings_but_not_other_requests():
    args = app_args(stage("bad"), stage("sibling"), stage("join", ("bad", "sibling")))
    cancelled = []

    async def sibling(call):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(call["input"])
            raise
        return "never"

    def bad(call):
        if call["input"] == "poison":
            raise KeyError("no such customer")
        return "fine"

    async def both():
        executor = WorkflowExecutor(args, Recorder({"bad": bad, "sibling": sibling}, delay_s={"sibling": 0}))
        healthy = WorkflowExecutor(app_args(stage("bad")), Recorder({"bad": bad}))
        return await asyncio.gather(executor.run(WorkflowRequest(input="poison")),
                                    healthy.run(WorkflowRequest(input="ok")))

    started = time.monotonic()
    failed, fine = asyncio.run(both())
    assert time.monotonic() - started < 2  # the sibling was cancelled, not awaited for 5 s
    assert failed.error == "stage 'bad' failed: KeyError: 'no such customer'"
    assert cancelled == ["poison"]
    assert fine.error is None and fine.output == "fine"


def test_stages_are_skipped_once_the_deadline_has_passed():
    args = app_args(stage("first"), stage("second", ("first",)))
    recorder = Recorder(delay_s={"first": 0.3})
    response = run(WorkflowExecutor(args, recorder), deadlineMs=100)
    assert not recorder.of("second")
    assert response.deadline_missed
    assert response.error == "stage 'second' failed: skipped: the request's deadline had passed"


def test_the_deadline_is_split_by_the_plans_predicted_latencies_along_the_slowest_path():
    # a -> (b | c) -> d: after a, the slowest path is c (3 s) then d (1 s).
    args = app_args(stage("a"), stage("b", ("a",)), stage("c", ("a",)), stage("d", ("b", "c")),
                    predicted_ms={"a": 2000, "b": 1000, "c": 3000, "d": 1000})
    recorder = Recorder()
    response = run(WorkflowExecutor(args, recorder), priority=7, deadlineMs=12_000)
    sched = recorder.of("a")[0]["sched"]
    assert sched["stage_mean_s"] == 2.0 and sched["remaining_stage_means_s"] == [3.0, 1.0]
    assert sched["priority"] == 7 and response.priority == 7
    assert sched["deadline_s"] - sched["arrival_s"] == pytest.approx(12.0)
    assert sched["est_seconds_by_class"] == {"cpu": 2.0}
    assert recorder.of("d")[0]["sched"]["remaining_stage_means_s"] == []


def test_without_a_deadline_or_priority_the_request_takes_the_workflows():
    args = app_args(stage("only"), latency_ms=3000, priority=5)
    response = run(WorkflowExecutor(args, Recorder()))
    assert response.deadline_ms == pytest.approx(3000) and response.priority == 5


def test_the_final_llm_stage_streams_its_tokens():
    args = app_args({"name": "chat", "kind": "llm", "model": "m", "inputTokens": 5, "outputTokens": 5},
                    stage("log", ("chat",)))
    recorder = Recorder({"chat": lambda c: "one two three"})
    tokens: list[str] = []

    async def sink(piece):
        tokens.append(piece)

    response = asyncio.run(WorkflowExecutor(args, recorder).run(WorkflowRequest(input="hi"), on_token=sink))
    assert tokens == ["one", "two", "three"]
    assert response.stages[0].output == "one two three"
