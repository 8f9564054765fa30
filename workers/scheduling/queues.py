"""Per-replica local queues: which waiting call a replica runs next.

``push(call, now_s)``; ``pop(now_s, hardware_class)`` removes and returns the next call (None when
empty); ``peek`` returns it without removing it. Ties go to the higher priority, then to the call
pushed first.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Protocol

from tessera.workers.scheduling.calls import StageCall, absolute_stage_deadline_s


class LocalQueue(Protocol):
    def push(self, call: StageCall, now_s: float) -> None: ...

    def pop(self, now_s: float, hardware_class: str) -> StageCall | None: ...

    def peek(self, now_s: float, hardware_class: str) -> StageCall | None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[StageCall]: ...


class _HeapQueue:
    """A heap of (key, sequence, call); subclasses say what the key is."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[float, ...], int, StageCall]] = []
        self._sequence = itertools.count()

    def _key(self, call: StageCall, now_s: float) -> tuple[float, ...]:
        raise NotImplementedError

    def push(self, call: StageCall, now_s: float) -> None:
        heapq.heappush(self._heap, (self._key(call, now_s), next(self._sequence), call))

    def pop(self, now_s: float, hardware_class: str) -> StageCall | None:
        return heapq.heappop(self._heap)[2] if self._heap else None

    def peek(self, now_s: float, hardware_class: str) -> StageCall | None:
        return self._heap[0][2] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[StageCall]:
        return (entry[2] for entry in self._heap)


class FCFSQueue(_HeapQueue):
    """First come, first served by push time (the vLLM baseline); priority is ignored."""

    def _key(self, call: StageCall, now_s: float) -> tuple[float, ...]:
        return (now_s,)


class UrgencyQueue(_HeapQueue):
    """Most urgent first (HEXGEN's local queue), urgency as in :func:`urgency`.

    At any one instant every waiting call's elapsed time grows alike, so the order by urgency on
    one hardware class equals the order by ``T_hw(step) − absolute stage deadline``, which does not
    change while a call waits: a queue bound to its replica's ``hardware_class`` keeps a heap on it.
    Popping for another class re-ranks by scanning. ``priority_weight_s`` as in :func:`urgency`.
    """

    def __init__(self, hardware_class: str | None = None, priority_weight_s: float = 0.0) -> None:
        super().__init__()
        self.hardware_class = hardware_class
        self.priority_weight_s = priority_weight_s

    def _rank(self, call: StageCall, hardware_class: str | None) -> tuple[float, ...]:
        est_s = call.est_seconds(hardware_class) if hardware_class else min(call.est_seconds_by_class.values(), default=0.0)
        urgency_at_zero = est_s - absolute_stage_deadline_s(call) + self.priority_weight_s * call.priority
        return (-urgency_at_zero, -call.priority)

    def _key(self, call: StageCall, now_s: float) -> tuple[float, ...]:
        return self._rank(call, self.hardware_class)

    def _best_index(self, hardware_class: str) -> int:
        return min(range(len(self._heap)), key=lambda i: (self._rank(self._heap[i][2], hardware_class), self._heap[i][1]))

    def pop(self, now_s: float, hardware_class: str) -> StageCall | None:
        if not self._heap or hardware_class == self.hardware_class:
            return super().pop(now_s, hardware_class)
        index = self._best_index(hardware_class)
        call = self._heap[index][2]
        self._heap[index] = self._heap[-1]
        self._heap.pop()
        heapq.heapify(self._heap)
        return call

    def peek(self, now_s: float, hardware_class: str) -> StageCall | None:
        if not self._heap or hardware_class == self.hardware_class:
            return super().peek(now_s, hardware_class)
        return self._heap[self._best_index(hardware_class)][2]

