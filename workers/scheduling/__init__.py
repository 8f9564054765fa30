"""Scheduling policies shared by the Ray workers and the simulator (pure Python: no Ray, no Kubernetes).

Two levels, after HEXGEN-TEXT2SQL: a global :class:`Dispatcher` sends each LLM call to a replica
(round-robin, workload-balanced by speed and outstanding work, or earliest predicted finish), and each replica's
:class:`LocalQueue` decides which waiting call runs next (first come first served, or most urgent
against its per-stage deadline share). Priorities: higher ``StageCall.priority`` is more urgent; it
breaks urgency ties and, with ``priority_weight_s``, adds urgency.
"""

from tessera.workers.scheduling.calls import (
    ReplicaView,
    StageCall,
    absolute_stage_deadline_s,
    stage_deadline_s,
    urgency,
)
from tessera.workers.scheduling.dispatch import (
    Dispatcher,
    EarliestFinishDispatcher,
    NoReplicaError,
    RoundRobinDispatcher,
    WorkloadBalancedDispatcher,
    eligible,
)
from tessera.workers.scheduling.policies import DEFAULT_ALPHA, POLICIES, Policy, QueueFactory, make_policy
from tessera.workers.scheduling.queues import FCFSQueue, LocalQueue, UrgencyQueue

__all__ = [
    "DEFAULT_ALPHA",
    "POLICIES",
    "Dispatcher",
    "EarliestFinishDispatcher",
    "FCFSQueue",
    "LocalQueue",
    "NoReplicaError",
    "Policy",
    "QueueFactory",
    "ReplicaView",
    "RoundRobinDispatcher",
    "StageCall",
    "UrgencyQueue",
    "WorkloadBalancedDispatcher",
    "absolute_stage_deadline_s",
    "eligible",
    "make_policy",
    "stage_deadline_s",
    "urgency",
]
