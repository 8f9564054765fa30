"""Global dispatchers: which replica a call goes to.

A dispatcher keeps a ledger of the work it assigned (``on_assign``/``on_complete``, in predicted
seconds on the chosen replica). It reads W_e as the larger of that ledger and the replica's own
report (``ReplicaView.outstanding_work_s``): the ledger knows assignments a replica has not yet
reported, the report knows work other dispatchers sent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from tessera.workers.scheduling.calls import ReplicaView, StageCall


class Dispatcher(Protocol):
    def choose(self, call: StageCall, replicas: Sequence[ReplicaView]) -> str: ...

    def on_assign(self, replica_id: str, seconds: float) -> None: ...

    def on_complete(self, replica_id: str, seconds: float) -> None: ...


class NoReplicaError(ValueError):
    """No replica can run the call (none given, or none of a class the call has an estimate for)."""


def eligible(call: StageCall, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
    """The replicas whose hardware class the call has a time estimate for (all, if it has none)."""
    if not replicas:
        raise NoReplicaError(f"no replica to run stage {call.stage!r} of request {call.request_id!r}")
    if not call.est_seconds_by_class:
        return list(replicas)
    able = [r for r in replicas if r.hardware_class in call.est_seconds_by_class]
    if not able:
        classes = sorted({r.hardware_class for r in replicas})
        raise NoReplicaError(
            f"stage {call.stage!r} has estimates for {sorted(call.est_seconds_by_class)}, replicas are {classes}"
        )
    return able


class _Ledger:
    def __init__(self) -> None:
        self.assigned_s: dict[str, float] = defaultdict(float)

    def on_assign(self, replica_id: str, seconds: float) -> None:
        self.assigned_s[replica_id] += seconds

    def on_complete(self, replica_id: str, seconds: float) -> None:
        self.assigned_s[replica_id] = max(0.0, self.assigned_s[replica_id] - seconds)

    def outstanding_s(self, replica: ReplicaView) -> float:
        return max(replica.outstanding_work_s, self.assigned_s.get(replica.replica_id, 0.0))


class RoundRobinDispatcher(_Ledger):
    """Each call goes to the next eligible replica in turn (the vLLM baseline).

    The turn is one counter over the sorted replica ids, so the rotation does not depend on the
    order the caller lists replicas in.
    """

    def __init__(self) -> None:
        super().__init__()
        self._turn = 0

    def choose(self, call: StageCall, replicas: Sequence[ReplicaView]) -> str:
        able = sorted(eligible(call, replicas), key=lambda r: r.replica_id)
        chosen = able[self._turn % len(able)]
        self._turn += 1
        return chosen.replica_id


class WorkloadBalancedDispatcher(_Ledger):
    """HEXGEN workload-balanced dispatch: the argmax over replicas of

    ``α · T_base(step) / T_e(step) − (1 − α) · W_e · k_e / W_base``.

    ``base_class`` names the class whose time is T_base; None takes the fastest class the call has
    an estimate for, so the speed term lies in (0, 1]. The paper leaves W_base open (docs/references.md): we take the
    mean weighted load ``W_e · k_e`` of the eligible replicas, at least T_base(step) so an idle fleet
    does not divide by zero; the load term is then a relative load, of the same order as the speed
    term. Ties go to the lower replica id.
    """

    def __init__(self, alpha: float = 0.2, base_class: str | None = None) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: must lie in [0, 1], got {alpha}")
        self.alpha = alpha
        self.base_class = base_class

    def scores(self, call: StageCall, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        able = eligible(call, replicas)
        if self.base_class is not None:
            base_s = call.est_seconds(self.base_class)
        else:
            base_s = min((call.est_seconds(r.hardware_class) for r in able), default=0.0)
        loads = {r.replica_id: self.outstanding_s(r) * r.weight for r in able}
        w_base = max(sum(loads.values()) / len(able), base_s, 1e-9)
        return {
            r.replica_id: self.alpha * (base_s / max(call.est_seconds(r.hardware_class), 1e-9) if base_s > 0 else 1.0)
            - (1.0 - self.alpha) * loads[r.replica_id] / w_base
            for r in able
        }

    def choose(self, call: StageCall, replicas: Sequence[ReplicaView]) -> str:
        scores = self.scores(call, replicas)
        return min(scores, key=lambda rid: (-scores[rid], rid))


class EarliestFinishDispatcher(_Ledger):
    """Tessera's own: send the call where it would finish first, ``argmin W_e + T_e(step)``.

    W_e is in the replica's own seconds (the ledger adds T_e of each call it sends there), so the
    sum predicts when this call would be done if the replica worked through its backlog one call at
    a time; no alpha to tune and no per-hardware weight. Ties go to the lower replica id.
    """

    def finish_estimates(self, call: StageCall, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        return {r.replica_id: self.outstanding_s(r) + call.est_seconds(r.hardware_class) for r in eligible(call, replicas)}

    def choose(self, call: StageCall, replicas: Sequence[ReplicaView]) -> str:
        finish = self.finish_estimates(call, replicas)
        return min(finish, key=lambda rid: (finish[rid], rid))
