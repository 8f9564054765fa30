"""The two scheduling levels of ``tessera.workers.scheduling`` plugged into Ray Serve.

- ``PolicyRequestRouter``: a Ray Serve ``RequestRouter`` (the global dispatcher). For each call it
  builds a ``StageCall`` from the call's ``sched`` keyword argument and a ``ReplicaView`` per
  replica from the replica's ``routing_stats``, and ranks the chosen replica first. Round-robin,
  workload-balanced or earliest-finish, as the policy says.
- ``ReplicaWorkQueue``: inside a replica, the calls Ray admitted wait in the policy's local queue
  (FCFS or urgency) for one of ``concurrency`` slots.

Ray admits up to ``max_ongoing_requests`` calls per replica; the runtime sets that well above the
replica's concurrency, so the waiting happens in the urgency queue (which orders it) and not in
Ray's router (which would only retry, first come first served, and warn "Failed to route request
after N attempts" while every replica is full).

The Ray Serve request-router API is alpha; this module is the only place that touches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from typing import Any, Callable

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from tessera.api import metrics as catalogue
from tessera.api.serve import HARDWARE_CLASS_ENV
from tessera.workers.metrics import make_metric
from tessera.workers.scheduling import DEFAULT_ALPHA, ReplicaView, StageCall, make_policy

STAGE_CALL_FIELDS = ("request_id", "stage", "priority", "arrival_s", "deadline_s", "stage_started_s",
                     "est_seconds_by_class", "remaining_stage_means_s", "stage_mean_s")


def stage_call(sched: dict | None, fallback_id: str = "", payload: Any = None) -> StageCall:
    """The StageCall of a ``sched`` dict (see executor.sched); a call without one gets neutral fields."""
    fields = {k: v for k, v in (sched or {}).items() if k in STAGE_CALL_FIELDS}
    fields.setdefault("request_id", fallback_id)
    fields.setdefault("stage", "unknown")
    return StageCall(**fields, payload=payload)


def replica_hardware_class(configured: str) -> str:
    """The class this replica runs on: the worker pod's (set by the operator), else the plan's."""
    return os.environ.get(HARDWARE_CLASS_ENV) or configured


class PolicyRequestRouter(FIFOMixin, RequestRouter):
    """Global dispatch by a named policy (``request_router_kwargs``: ``policy``, ``alpha``, ``weights``).

    ``weights`` maps a hardware class to k_e of the workload-balanced score (default 1).
    Replicas that are full by Ray's own count (``max_ongoing_requests``) are left out first.
    ``FIFOMixin`` is needed in Ray 2.60: without it a second concurrent call to the same
    deployment is never handed its replica (seen: the router spins). With it, a chosen replica
    goes to the oldest waiting call, which may differ from the call it was chosen for when
    several wait at once.
    """

    def initialize_state(self, policy: str = "wb-urgency", alpha: float = DEFAULT_ALPHA,
                         weights: dict[str, float] | None = None, **_: Any) -> None:
        self.dispatcher, _queue = make_policy(policy, alpha)
        self.weights = weights or {}
        self.assigned: dict[str, tuple[str, float]] = {}  # internal request id -> (replica, seconds)

    def _view(self, replica: RunningReplica) -> ReplicaView:
        stats = replica.routing_stats or {}
        hardware_class = stats.get("hardware_class", "unknown")
        return ReplicaView(replica.replica_id.unique_id, hardware_class,
                           float(stats.get("outstanding_work_s", 0.0)), self.weights.get(hardware_class, 1.0))

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        replicas = self.select_available_replicas(candidate_replicas) or candidate_replicas
        sched = pending_request.kwargs.get("sched") if pending_request is not None else None
        call = stage_call(sched)
        views = [self._view(r) for r in replicas]
        # A replica whose stats have not arrived yet (class "unknown"), or of a class the caller gave no
        # estimate for, is costed at the slowest known estimate rather than left out.
        call.est_seconds_by_class = {**{v.hardware_class: call.est_seconds(v.hardware_class) for v in views},
                                     **call.est_seconds_by_class}
        by_id = {r.replica_id.unique_id: r for r in replicas}
        chosen = self.dispatcher.choose(call, views)
        rest = [r for rid, r in sorted(by_id.items()) if rid != chosen]
        return [[by_id[chosen]], rest] if rest else [[by_id[chosen]]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id, result) -> None:
        call = stage_call(pending_request.kwargs.get("sched"))
        replica = self.curr_replicas.get(replica_id)
        hardware_class = (replica.routing_stats or {}).get("hardware_class", "unknown") if replica else "unknown"
        seconds = call.est_seconds(hardware_class)
        self.dispatcher.on_assign(replica_id.unique_id, seconds)
        self.assigned[pending_request.metadata.internal_request_id] = (replica_id.unique_id, seconds)

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        assigned = self.assigned.pop(internal_request_id, None)
        if assigned:
            self.dispatcher.on_complete(*assigned)


class ReplicaWorkQueue:
    """The local level: admitted calls wait in the policy's queue for one of ``concurrency`` slots.

    ``run(sched, fn, *args)`` queues the call, waits for its turn, then runs ``fn``: awaited when it
    is a coroutine function, else in a thread, so the replica keeps admitting (and ordering) calls
    while one runs. A caller cancelled at any point gives its slot back.
    """

    def __init__(self, stage: str, replica: str, hardware_class: str, policy: str = "wb-urgency",
                 concurrency: int = 1):
        _dispatcher, queue_factory = make_policy(policy)
        self.queue = queue_factory(hardware_class)
        self.stage, self.replica, self.hardware_class = stage, replica, hardware_class
        self.free = concurrency
        self.running_s: dict[int, float] = {}
        self._depth = make_metric(catalogue.WORKER_QUEUE_DEPTH).labels(stage=stage, replica=replica,
                                                                         hardware_class=hardware_class)
        self._wait = make_metric(catalogue.WORKER_QUEUE_WAIT_SECONDS).labels(stage=stage, hardware_class=hardware_class)

    def outstanding_work_s(self) -> float:
        """W_e as this replica knows it: the predicted seconds of the calls queued and running here."""
        queued = sum(call.est_seconds(self.hardware_class) for call in self.queue)
        return queued + sum(self.running_s.values())

    def routing_stats(self) -> dict[str, Any]:
        return {"hardware_class": self.hardware_class, "outstanding_work_s": self.outstanding_work_s(),
                "queue_depth": len(self.queue)}

    def _pump(self) -> None:
        while self.free > 0 and len(self.queue):
            call = self.queue.pop(time.time(), self.hardware_class)
            if call.payload.done():  # its caller gave up (cancelled) while it waited
                continue
            self.free -= 1
            call.payload.set_result(None)
        self._depth.set(len(self.queue))

    async def _turn(self, sched: dict | None) -> tuple[asyncio.Future, StageCall]:
        """Waits for a slot; the slot is this caller's once this returns (and only then)."""
        turn = asyncio.get_running_loop().create_future()
        call = stage_call(sched, payload=turn)
        queued_at = time.time()
        self.queue.push(call, queued_at)
        self._pump()
        try:
            await asyncio.shield(turn)
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted as the caller was cancelled: give it back
                self.free += 1
                self._pump()
            else:
                turn.cancel()  # still queued: _pump skips it
            raise
        self._wait.observe(time.time() - queued_at)
        return turn, call

    @contextlib.asynccontextmanager
    async def slot(self, sched: dict | None):
        """Holds one of the replica's slots, granted in the queue's order, for the ``async with`` body."""
        turn, call = await self._turn(sched)
        self.running_s[id(turn)] = call.est_seconds(self.hardware_class)
        try:
            yield
        finally:
            del self.running_s[id(turn)]
            self.free += 1
            self._pump()

    async def run(self, sched: dict | None, fn: Callable, *args):
        async with self.slot(sched):
            if inspect.iscoroutinefunction(fn):
                return await fn(*args)
            return await asyncio.to_thread(fn, *args)
