"""The demo's burst (pure parts): every input once per priority, deadlines this machine can meet when the
urgent class goes first, and the checks it prints."""

from __future__ import annotations

import pytest

from tessera.api import AgentWorkflow
from tessera.cli.demo import TRAFFIC_CLASSES, burst_bodies, checks, deadline_unit_ms, failures
from tessera.cli.documents import load
from tessera.workers.runtime.executor import DEADLINE_PASSED
from tessera_devtools import EXAMPLES

CHAT = next(wf for wf in load([str(EXAMPLES / "workflows" / "chat.yaml")]).of_kind(AgentWorkflow))


def test_each_input_goes_once_per_priority_the_urgent_one_last():
    bodies = burst_bodies(["a", "b"], unit_ms=1000.0)
    assert [(b["input"], b["priority"]) for b in bodies] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert {b["priority"]: b["deadlineMs"] for b in bodies} == {p: factor * 1000.0 for p, factor in TRAFFIC_CLASSES}


@pytest.mark.parametrize("alone_ms, unit_ms", [
    ([100.0, 200.0, 300.0], CHAT.spec.slo.latency_ms),  # fast enough: the workflow's own SLO
    ([3000.0, 4000.0, 2000.0], 13_000.0),  # slower than planned: the urgent inputs in turn, after the longest
])
def test_the_urgent_deadline_is_the_slo_unless_this_machine_cannot_serve_the_urgent_class_within_it(alone_ms, unit_ms):
    assert deadline_unit_ms(CHAT, alone_ms) == unit_ms


def row(attainment: float, p50: float) -> dict:
    return {"sloAttainment": attainment, "p50Ms": p50}


@pytest.mark.parametrize("urgency, fcfs, expected", [
    ({"2": row(1.0, 10), "1": row(1.0, 20), "0": row(1.0, 30)}, {"2": row(0.3, 40)},
     {"urgentHasLowestP50": True, "urgentAttainmentAtLeastFcfs": True}),
    ({"2": row(0.5, 25), "1": row(1.0, 20), "0": row(1.0, 30)}, {"2": row(0.7, 40)},
     {"urgentHasLowestP50": False, "urgentAttainmentAtLeastFcfs": False}),
])
def test_checks_compare_the_urgent_class_with_the_others_and_with_fcfs(urgency, fcfs, expected):
    assert checks({"urgency": {"byPriority": urgency}, "fcfs": {"byPriority": fcfs}}) == expected


@pytest.mark.parametrize("errors, expected", [
    ([None, None], {"errors": [], "stoppedPastDeadline": 0}),
    ([f"stage 'file-ticket' failed: {DEADLINE_PASSED}", None, f"stage 'answer' failed: {DEADLINE_PASSED} (last attempt: x)"],
     {"errors": [], "stoppedPastDeadline": 2}),
    (["stage 'answer' failed: boom", "stage 'answer' failed: boom", f"stage 'file-ticket' failed: {DEADLINE_PASSED}"],
     {"errors": ["stage 'answer' failed: boom"], "stoppedPastDeadline": 1}),
])
def test_requests_stopped_past_their_deadline_are_counted_apart_from_errors(errors, expected):
    assert failures([{"error": e} for e in errors]) == expected
