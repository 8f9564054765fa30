"""Small builders of StageCall and ReplicaView for table-driven policy tests."""

from __future__ import annotations

from tessera.workers.scheduling import ReplicaView, StageCall


def call(
    request_id: str = "r",
    *,
    priority: int = 0,
    arrival: float = 0.0,
    deadline: float = 100.0,
    started: float = 0.0,
    est: dict[str, float] | None = None,
    mean: float = 10.0,
    remaining: tuple[float, ...] = (),
    stage: str = "generate_candidate",
) -> StageCall:
    return StageCall(
        request_id=request_id,
        stage=stage,
        priority=priority,
        arrival_s=arrival,
        deadline_s=deadline,
        stage_started_s=started,
        est_seconds_by_class=dict(est if est is not None else {"a100": 10.0, "a6000": 19.0}),
        remaining_stage_means_s=list(remaining),
        stage_mean_s=mean,
    )


def replica(replica_id: str, hardware_class: str = "a100", work: float = 0.0, weight: float = 1.0) -> ReplicaView:
    return ReplicaView(replica_id=replica_id, hardware_class=hardware_class, outstanding_work_s=work, weight=weight)
