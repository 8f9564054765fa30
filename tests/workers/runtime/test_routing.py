"""The Ray Serve wrappers of the scheduling policies: the request router and the replica work queue.

They run here without a Ray cluster: the router is the real RequestRouter subclass fed with
replica stand-ins that carry what Ray gives it (ids, routing stats); the queue is pure asyncio.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID  # noqa: E402

from tessera.workers.runtime.routing import PolicyRequestRouter, ReplicaWorkQueue  # noqa: E402


def replica(name: str, hardware_class: str, outstanding_s: float = 0.0):
    return SimpleNamespace(replica_id=ReplicaID(name, DeploymentID("llm", "app")), max_ongoing_requests=4,
                           routing_stats={"hardware_class": hardware_class, "outstanding_work_s": outstanding_s})


def pending(request_id: str, est: dict[str, float], deadline_s: float = 1e12):
    sched = {"request_id": request_id, "stage": "candidate_generation", "deadline_s": deadline_s,
             "stage_started_s": 0.0, "est_seconds_by_class": est, "stage_mean_s": 1.0}
    return SimpleNamespace(kwargs={"sched": sched}, metadata=SimpleNamespace(internal_request_id=request_id))


def make_router(policy: str, alpha: float) -> PolicyRequestRouter:
    router = PolicyRequestRouter(DeploymentID("llm", "app"), DeploymentHandleSource.UNKNOWN)
    router.initialize_state(policy=policy, alpha=alpha)
    return router


def chosen(router, replicas, request) -> str:
    ranks = asyncio.run(router.choose_replicas(replicas, request))
    return ranks[0][0].replica_id.unique_id


def test_workload_balanced_prefers_the_fast_class_when_speed_dominates():
    async def run():
        router = make_router("wb-urgency", alpha=1.0)
        replicas = [replica("slow", "a6000", 0.0), replica("fast", "h100", 30.0)]
        ranks = await router.choose_replicas(replicas, pending("r1", {"h100": 1.0, "a6000": 4.0}))
        return [[r.replica_id.unique_id for r in rank] for rank in ranks]

    assert asyncio.run(run()) == [["fast"], ["slow"]]


def test_workload_balanced_avoids_the_loaded_replica_when_load_dominates():
    async def run():
        router = make_router("wb-fcfs", alpha=0.0)
        replicas = [replica("slow", "a6000", 0.0), replica("fast", "h100", 30.0)]
        return (await router.choose_replicas(replicas, pending("r1", {"h100": 1.0, "a6000": 4.0})))[0][0]

    assert asyncio.run(run()).replica_id.unique_id == "slow"


def test_round_robin_takes_turns_whatever_the_load():
    async def run():
        router = make_router("rr-fcfs", alpha=0.5)
        replicas = [replica("b", "cpu", 100.0), replica("a", "cpu", 0.0)]
        picks = []
        for i in range(4):
            picks.append((await router.choose_replicas(replicas, pending(f"r{i}", {"cpu": 1.0})))[0][0].replica_id.unique_id)
        return picks

    assert asyncio.run(run()) == ["a", "b", "a", "b"]


def test_assigned_work_counts_until_the_request_completes():
    async def run():
        router = make_router("wb-urgency", alpha=0.0)
        replicas = [replica("a", "cpu"), replica("b", "cpu")]
        first = (await router.choose_replicas(replicas, pending("r1", {"cpu": 5.0})))[0][0]
        router.on_request_routed(pending("r1", {"cpu": 5.0}), first.replica_id, None)
        second = (await router.choose_replicas(replicas, pending("r2", {"cpu": 5.0})))[0][0]
        router.on_request_completed(first.replica_id, "r1")
        third = (await router.choose_replicas(replicas, pending("r3", {"cpu": 5.0})))[0][0]
        return first.replica_id.unique_id, second.replica_id.unique_id, third.replica_id.unique_id

    first, second, third = asyncio.run(run())
    assert second != first  # the first replica holds 5 s of assigned work
    assert third == first  # ... until its call completed (ties go to the lower id)


@pytest.mark.parametrize("policy,expected", [("wb-urgency", ["urgent", "late", "relaxed"]),
                                             ("wb-fcfs", ["relaxed", "late", "urgent"])])
def test_the_replica_queue_runs_the_most_urgent_call_next(policy, expected):
    """One worker busy; three calls wait, pushed relaxed first. Urgency: the tightest stage deadline first."""
    async def run():
        queue = ReplicaWorkQueue("candidate_generation", f"r-{policy}", "cpu", policy, concurrency=1)
        order: list[str] = []
        release = asyncio.Event()

        def hold_the_worker():
            while not release.is_set():
                time.sleep(0.01)

        blocking = asyncio.create_task(queue.run({"request_id": "b", "stage": "s"}, hold_the_worker))
        await asyncio.sleep(0.05)
        now = time.time()
        tasks = []
        for name, deadline in {"relaxed": now + 100, "late": now + 50, "urgent": now + 5}.items():
            sched = {"request_id": name, "stage": "s", "deadline_s": deadline, "stage_started_s": now,
                     "est_seconds_by_class": {"cpu": 1.0}, "stage_mean_s": 1.0}
            tasks.append(asyncio.create_task(queue.run(sched, order.append, name)))
            await asyncio.sleep(0.01)
        stats = queue.routing_stats()
        release.set()
        await asyncio.gather(blocking, *tasks)
        return order, stats

    order, stats = asyncio.run(run())
    assert stats["queue_depth"] == 3
    assert stats["outstanding_work_s"] == pytest.approx(3.0)  # three queued 1 s calls (the blocker has none)
    assert order == expected


def test_a_replica_without_routing_stats_yet_is_still_routable():
    """Right after start a replica has reported no hardware class: it must not make routing fail."""
    async def run():
        router = make_router("wb-urgency", alpha=0.2)
        fresh = SimpleNamespace(replica_id=ReplicaID("fresh", DeploymentID("llm", "app")), max_ongoing_requests=4,
                                routing_stats={})
        return (await router.choose_replicas([fresh], pending("r1", {"cpu": 1.0})))[0][0]

    assert asyncio.run(run()).replica_id.unique_id == "fresh"


def test_a_call_cancelled_right_after_its_turn_was_granted_gives_the_slot_back():
    """Concurrency 1: if the granted caller is cancelled before it resumes, the next call must still run."""
    import threading

    async def scenario():
        queue = ReplicaWorkQueue("candidate_generation", "r0", "cpu", policy="rr-fcfs", concurrency=1)
        gate = threading.Event()
        holder = asyncio.create_task(queue.run(None, gate.wait, 5))
        await asyncio.sleep(0.05)
        victim = asyncio.create_task(queue.run(None, lambda: "victim"))
        await asyncio.sleep(0.05)
        pump = queue._pump

        def pump_then_cancel_the_granted_victim():
            pump()  # when the holder finishes, this grants the victim its turn ...
            if gate.is_set() and not victim.done():
                victim.cancel()  # ... and the victim is cancelled before it could resume

        queue._pump = pump_then_cancel_the_granted_victim
        gate.set()
        await holder
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert await asyncio.wait_for(queue.run(None, lambda: "next"), timeout=2.0) == "next"
        assert queue.free == 1

    asyncio.run(scenario())
