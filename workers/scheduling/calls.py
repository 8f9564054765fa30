"""What a scheduler knows about one LLM call and one replica, and the HEXGEN deadline arithmetic.

All times are seconds on one clock (wall clock in Ray, the virtual clock in the simulator).
``deadline_s`` and ``stage_started_s`` are absolute; ``*_mean_s`` and ``est_seconds_by_class`` are durations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageCall:
    """One call of one workflow stage waiting to be dispatched or run.

    ``est_seconds_by_class`` is T_e(step): the predicted run time of this call on each hardware
    class (a class missing from it cannot run the call). ``remaining_stage_means_s`` holds T̄(r) of
    the stages that still follow this one; ``stage_mean_s`` is T̄(s) of this stage (the mean over
    hardware classes in HEXGEN). ``priority``: higher is more urgent (AgentWorkflow spec.priority).
    ``payload`` carries whatever the caller needs back (a Ray request, a simulator job).
    """

    request_id: str
    stage: str
    priority: int = 0
    arrival_s: float = 0.0
    deadline_s: float = float("inf")
    stage_started_s: float = 0.0
    est_seconds_by_class: dict[str, float] = field(default_factory=dict)
    remaining_stage_means_s: list[float] = field(default_factory=list)
    stage_mean_s: float = 0.0
    payload: Any = field(default=None, repr=False, compare=False)

    def est_seconds(self, hardware_class: str) -> float:
        """T_e(step) on ``hardware_class``; a class without an estimate gets the slowest known one."""
        if hardware_class in self.est_seconds_by_class:
            return self.est_seconds_by_class[hardware_class]
        return max(self.est_seconds_by_class.values(), default=0.0)


@dataclass
class ReplicaView:
    """A replica as the global dispatcher sees it.

    ``outstanding_work_s`` is W_e, the predicted seconds of work assigned to it and not yet done;
    ``weight`` is k_e, the per-hardware load weight of the workload-balanced score (HEXGEN uses 0.5
    for the weaker GPUs: their W_e is counted in their own slower seconds).
    """

    replica_id: str
    hardware_class: str
    outstanding_work_s: float = 0.0
    weight: float = 1.0


def stage_deadline_s(call: StageCall) -> float:
    """SLO_stage: the seconds this stage may take, counted from ``call.stage_started_s``.

    HEXGEN: ``SLO_stage = (SLO − elapsed) · T̄(s) / (T̄(s) + Σ_remaining T̄(r))`` — the time left to
    the request's deadline when the stage starts, shared in proportion to the stages' mean times.
    A stage with no mean-time estimate gets an equal share with each remaining stage.
    """
    left_s = call.deadline_s - call.stage_started_s
    remaining_s = sum(call.remaining_stage_means_s)
    if call.stage_mean_s <= 0.0:
        return left_s / (1 + len(call.remaining_stage_means_s))
    return left_s * call.stage_mean_s / (call.stage_mean_s + remaining_s)


def absolute_stage_deadline_s(call: StageCall) -> float:
    """The clock time by which this stage should finish to keep the request on its SLO."""
    return call.stage_started_s + stage_deadline_s(call)


def urgency(call: StageCall, now_s: float, hardware_class: str, priority_weight_s: float = 0.0) -> float:
    """HEXGEN urgency, higher = more urgent: ``T_hw(step) − (SLO_stage − elapsed_in_stage)``.

    It equals the seconds by which the stage would overrun its share if it started now on
    ``hardware_class``: positive is already late, negative is slack. ``priority_weight_s`` adds
    that many seconds of urgency per unit of ``call.priority`` (0: priority only breaks ties,
    which the queues do).
    """
    elapsed_in_stage_s = now_s - call.stage_started_s
    slack_s = stage_deadline_s(call) - elapsed_in_stage_s
    return call.est_seconds(hardware_class) - slack_s + priority_weight_s * call.priority
