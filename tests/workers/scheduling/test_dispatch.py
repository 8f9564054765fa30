"""Global dispatchers: round-robin rotation and workload-balanced scores."""

from __future__ import annotations

import pytest

from tessera.workers.scheduling import (
    POLICIES,
    EarliestFinishDispatcher,
    FCFSQueue,
    NoReplicaError,
    RoundRobinDispatcher,
    UrgencyQueue,
    WorkloadBalancedDispatcher,
    make_policy,
)

from .factories import call, replica


def test_round_robin_rotates_in_id_order_whatever_the_listing():
    rr = RoundRobinDispatcher()
    fleet = [replica("c"), replica("a"), replica("b")]
    picks = [rr.choose(call(), fleet if i % 2 else list(reversed(fleet))) for i in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_skips_replicas_without_an_estimate():
    rr = RoundRobinDispatcher()
    fleet = [replica("a", "a100"), replica("b", "cpu"), replica("c", "a6000")]
    assert [rr.choose(call(), fleet) for _ in range(4)] == ["a", "c", "a", "c"]


@pytest.mark.parametrize(
    ("alpha", "fleet", "expected_scores"),
    [
        # idle fleet, alpha 0.5: only speed counts; T_base = 10 (fastest), a6000 10/19
        (0.5, [replica("a", "a100"), replica("b", "a6000")], {"a": 0.5, "b": 0.5 * 10 / 19}),
        # alpha 0: only load; W_base = mean(30, 10) = 20
        (0.0, [replica("a", "a100", 30.0), replica("b", "a6000", 10.0)], {"a": -1.5, "b": -0.5}),
        # k_e halves the weaker GPU's load: loads 20 and 20*0.5=10, W_base 15
        (
            0.2,
            [replica("a", "a100", 20.0), replica("b", "a6000", 20.0, weight=0.5)],
            {"a": 0.2 - 0.8 * 20 / 15, "b": 0.2 * 10 / 19 - 0.8 * 10 / 15},
        ),
        # loads below T_base: W_base is T_base (10)
        (0.0, [replica("a", "a100", 2.0), replica("b", "a100", 4.0)], {"a": -0.2, "b": -0.4}),
    ],
)
def test_workload_balanced_scores(alpha, fleet, expected_scores):
    scores = WorkloadBalancedDispatcher(alpha).scores(call(), fleet)
    assert scores == pytest.approx(expected_scores)
    best = max(expected_scores, key=expected_scores.get)
    assert WorkloadBalancedDispatcher(alpha).choose(call(), fleet) == best


def test_workload_balanced_base_class_sets_t_base():
    wb = WorkloadBalancedDispatcher(1.0, base_class="a6000")
    assert wb.scores(call(), [replica("a", "a100"), replica("b", "a6000")]) == pytest.approx({"a": 1.9, "b": 1.0})


def test_ledger_spreads_a_burst_and_drains():
    wb = WorkloadBalancedDispatcher(0.2)
    fleet = [replica("a", "a100"), replica("b", "a100")]
    first = wb.choose(call(), fleet)
    wb.on_assign(first, 10.0)
    second = wb.choose(call(), fleet)
    assert {first, second} == {"a", "b"}
    wb.on_complete(first, 10.0)
    wb.on_complete(first, 10.0)  # never below zero
    assert wb.assigned_s[first] == 0.0


def test_reported_work_beats_a_stale_ledger():
    wb = WorkloadBalancedDispatcher(0.0)
    assert wb.choose(call(), [replica("a", "a100", work=50.0), replica("b", "a100")]) == "b"


@pytest.mark.parametrize("fleet", [[], [replica("x", "cpu")]])
def test_no_eligible_replica_is_a_clear_error(fleet):
    with pytest.raises(NoReplicaError, match="generate_candidate|no replica"):
        RoundRobinDispatcher().choose(call(), fleet)


def test_alpha_out_of_range_names_the_field():
    with pytest.raises(ValueError, match="alpha"):
        WorkloadBalancedDispatcher(1.5)


@pytest.mark.parametrize(
    ("name", "dispatcher_type", "queue_type"),
    [
        ("rr-fcfs", RoundRobinDispatcher, FCFSQueue),
        ("rr-urgency", RoundRobinDispatcher, UrgencyQueue),
        ("wb-fcfs", WorkloadBalancedDispatcher, FCFSQueue),
        ("wb-urgency", WorkloadBalancedDispatcher, UrgencyQueue),
        ("ef-urgency", EarliestFinishDispatcher, UrgencyQueue),
    ],
)
def test_make_policy_pairs(name, dispatcher_type, queue_type):
    assert name in POLICIES
    dispatcher, queue_factory = make_policy(name, alpha=0.3)
    assert isinstance(dispatcher, dispatcher_type)
    assert isinstance(queue_factory("a100"), queue_type)
    if isinstance(dispatcher, WorkloadBalancedDispatcher):
        assert dispatcher.alpha == 0.3


def test_unknown_policy_lists_the_known_ones():
    with pytest.raises(KeyError, match="rr-fcfs"):
        make_policy("fastest")


@pytest.mark.parametrize(
    ("fleet", "est", "expected"),
    [
        # idle: the fastest class
        ([replica("a", "a100"), replica("b", "a6000")], {"a100": 10.0, "a6000": 19.0}, "a"),
        # the fast one is 12 s behind: 12 + 10 > 0 + 19, the slow one finishes first
        ([replica("a", "a100", 12.0), replica("b", "a6000")], {"a100": 10.0, "a6000": 19.0}, "b"),
        # 8 s behind: 8 + 10 < 19, still the fast one
        ([replica("a", "a100", 8.0), replica("b", "a6000")], {"a100": 10.0, "a6000": 19.0}, "a"),
        # k_e plays no part
        ([replica("a", "a100", 12.0), replica("b", "a6000", weight=0.1)], {"a100": 10.0, "a6000": 19.0}, "b"),
        # a tie goes to the lower id
        ([replica("b", "a100"), replica("a", "a100")], {"a100": 10.0}, "a"),
    ],
)
def test_earliest_finish(fleet, est, expected):
    assert EarliestFinishDispatcher().choose(call(est=est), fleet) == expected


def test_earliest_finish_counts_its_own_assignments():
    ef = EarliestFinishDispatcher()
    fleet = [replica("a", "a100"), replica("b", "a6000")]
    picks = []
    for _ in range(3):
        rid = ef.choose(call(), fleet)
        ef.on_assign(rid, call().est_seconds("a100" if rid == "a" else "a6000"))
        picks.append(rid)
    assert picks == ["a", "b", "a"]  # 0+10 | 10+10 > 0+19 | 10+10 < 19+19
