"""Named scheduling policies: a global dispatcher paired with a per-replica queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from tessera.workers.scheduling.dispatch import (
    Dispatcher,
    EarliestFinishDispatcher,
    RoundRobinDispatcher,
    WorkloadBalancedDispatcher,
)
from tessera.workers.scheduling.queues import FCFSQueue, LocalQueue, UrgencyQueue

DEFAULT_ALPHA = 0.2

QueueFactory = Callable[[str], LocalQueue]  # hardware class of the replica -> its queue


class Policy(NamedTuple):
    """``dispatcher(alpha, base_class)`` makes the dispatcher; ``queue(hardware_class, priority_weight_s)`` a queue."""

    dispatcher: Callable[[float, str | None], Dispatcher]
    queue: Callable[[str, float], LocalQueue]


def _round_robin(alpha: float, base_class: str | None) -> Dispatcher:
    return RoundRobinDispatcher()


def _earliest_finish(alpha: float, base_class: str | None) -> Dispatcher:
    return EarliestFinishDispatcher()


def _fcfs(hardware_class: str, priority_weight_s: float) -> LocalQueue:
    return FCFSQueue()


POLICIES: dict[str, Policy] = {
    "rr-fcfs": Policy(_round_robin, _fcfs),
    "rr-urgency": Policy(_round_robin, UrgencyQueue),
    "wb-fcfs": Policy(WorkloadBalancedDispatcher, _fcfs),
    "wb-urgency": Policy(WorkloadBalancedDispatcher, UrgencyQueue),
    # Tessera's own: earliest predicted finish, then urgency (no alpha to tune)
    "ef-urgency": Policy(_earliest_finish, UrgencyQueue),
}


def make_policy(
    name: str, alpha: float = DEFAULT_ALPHA, base_class: str | None = None, priority_weight_s: float = 0.0
) -> tuple[Dispatcher, QueueFactory]:
    """A fresh dispatcher and a factory of per-replica queues for the policy ``name``.

    ``alpha`` weighs speed against load in the workload-balanced dispatcher (ignored by the
    others); ``priority_weight_s`` is the urgency added per unit of priority (urgency queues).
    """
    if name not in POLICIES:
        raise KeyError(f"policy: unknown {name!r}, choose one of {', '.join(POLICIES)}")
    policy = POLICIES[name]

    def queue_factory(hardware_class: str) -> LocalQueue:
        return policy.queue(hardware_class, priority_weight_s)

    return policy.dispatcher(alpha, base_class), queue_factory
