"""Local queues: FCFS order, urgency order, priority tie-breaks, popping for another class."""

from __future__ import annotations

import pytest

from tessera.workers.scheduling import FCFSQueue, UrgencyQueue

from .factories import call


def drain(queue, hw="a100", now=0.0):
    order = []
    while (c := queue.pop(now, hw)) is not None:
        order.append(c.request_id)
    return order


# (request_id, push time, call kwargs)
URGENCY_CASES = [
    pytest.param(
        [("loose", 0.0, {"deadline": 200.0}), ("tight", 1.0, {"deadline": 40.0})],
        ["tight", "loose"],
        id="earlier-deadline-first",
    ),
    pytest.param(
        [("short", 0.0, {"est": {"a100": 1.0}}), ("long", 1.0, {"est": {"a100": 30.0}})],
        ["long", "short"],
        id="same-deadline-longer-run-first",
    ),
    pytest.param(
        [("low", 0.0, {"priority": 0}), ("high", 1.0, {"priority": 5})],
        ["high", "low"],
        id="tie-goes-to-higher-priority",
    ),
    pytest.param(
        [("first", 0.0, {}), ("second", 1.0, {})],
        ["first", "second"],
        id="full-tie-goes-to-first-pushed",
    ),
    pytest.param(
        # the last stage (share = all time left) is less urgent than a first stage with a small share
        [("last-stage", 0.0, {"deadline": 60.0}), ("early-stage", 1.0, {"deadline": 90.0, "remaining": (40.0,)})],
        ["early-stage", "last-stage"],
        id="uses-stage-share-not-request-deadline",
    ),
]


@pytest.mark.parametrize(("pushes", "expected"), URGENCY_CASES)
def test_urgency_queue_order(pushes, expected):
    queue = UrgencyQueue("a100")
    for rid, t, kwargs in pushes:
        queue.push(call(rid, **kwargs), t)
    assert queue.peek(5.0, "a100").request_id == expected[0]
    assert drain(queue) == expected


def test_fcfs_ignores_deadline_and_priority():
    queue = FCFSQueue()
    queue.push(call("a", deadline=500.0), 0.0)
    queue.push(call("b", deadline=10.0, priority=9), 1.0)
    queue.push(call("c", deadline=5.0), 2.0)
    assert len(queue) == 3
    assert drain(queue) == ["a", "b", "c"]
    assert queue.pop(3.0, "a100") is None and queue.peek(3.0, "a100") is None


def test_urgency_queue_reranks_for_another_class():
    # on the a100 both have 10 s of slack; on the a6000 "x" runs much slower and becomes most urgent
    queue = UrgencyQueue("a100")
    queue.push(call("x", deadline=50.0, est={"a100": 10.0, "a6000": 45.0}), 0.0)
    queue.push(call("y", deadline=40.0, est={"a100": 0.0, "a6000": 0.0}), 0.0)
    queue.push(call("z", deadline=300.0, est={"a100": 1.0, "a6000": 1.0}), 0.0)
    assert queue.peek(0.0, "a100").request_id == "x"  # 50−10 = 40 vs 40−0 = 40: pushed first wins
    assert queue.peek(0.0, "a6000").request_id == "x"
    assert queue.pop(0.0, "a6000").request_id == "x"
    assert drain(queue, hw="a6000") == ["y", "z"]


def test_unbound_urgency_queue_ranks_by_fastest_estimate():
    queue = UrgencyQueue()
    queue.push(call("slack", deadline=100.0), 0.0)
    queue.push(call("urgent", deadline=20.0), 0.0)
    assert drain(queue, hw="l40s") == ["urgent", "slack"]
