"""POLCA's two-threshold power capping of one power group, as one pure policy for the simulator and
the operator (docs/power.md).

No I/O and no clock of its own: the caller passes the group's draw and the time, and applies what
comes back. Above T1 the devices that serve the least urgent work are capped first, above T2 every
device is capped to the lower level; a level lifts once the draw falls ``margin`` below the
threshold that set it, and no sooner than ``hold_s`` after it was set (without the hold a cap that
works lifts itself at once and the group oscillates). A change acts ``delay_s`` after the draw
crossed the line (the time to read the agents, decide and write the limits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from tessera.api.power import CappingPolicy


class Level(IntEnum):
    NONE = 0  # no cap
    LOW = 1  # above T1: the least urgent devices capped
    ALL = 2  # above T2: every device capped to the lower level


@dataclass(frozen=True)
class Thresholds:
    """A PowerBudget's capping policy in the units the controller computes in (watts, fractions, seconds)."""

    provisioned_watts: float
    t1: float = 0.85  # of provisioned watts
    t2: float = 0.95
    margin: float = 0.05
    low_cap: float = 0.70  # of each device's TDP
    all_cap: float = 0.60
    low_priority_below: int = 1
    delay_s: float = 1.0
    hold_s: float = 10.0

    @classmethod
    def from_policy(cls, provisioned_watts: float, policy: CappingPolicy) -> "Thresholds":
        return cls(
            provisioned_watts=provisioned_watts, t1=policy.threshold_t1_percent / 100,
            t2=policy.threshold_t2_percent / 100, margin=policy.uncap_margin_percent / 100,
            low_cap=policy.low_priority_cap_percent / 100, all_cap=policy.all_cap_percent / 100,
            low_priority_below=policy.low_priority_below, delay_s=policy.decision_delay_seconds,
            hold_s=policy.min_cap_seconds,
        )


@dataclass(frozen=True)
class Device:
    """One device of the group: ``priority`` is the highest priority of the work it serves (None: idle)."""

    id: str
    tdp_watts: float
    priority: int | None = None


@dataclass(frozen=True)
class Cap:
    device: str
    watts: float
    level: Level


class Controller:
    """The state of one group's controller: its level, since when, and whether a decision is pending."""

    def __init__(self, thresholds: Thresholds):
        self.thresholds = thresholds
        self.level = Level.NONE
        self.level_since = -math.inf
        self.pending_at: float | None = None  # when the pending decision is due
        self.cap_events = 0

    def wanted(self, watts: float) -> Level:
        p, budget = self.thresholds, self.thresholds.provisioned_watts
        if watts > p.t2 * budget or (self.level == Level.ALL and watts > (p.t2 - p.margin) * budget):
            return Level.ALL
        if watts > p.t1 * budget or (self.level >= Level.LOW and watts > (p.t1 - p.margin) * budget):
            return Level.LOW
        return Level.NONE

    def observe(self, now: float, watts: float) -> float | None:
        """A new reading of the group's draw: when the controller should decide (None: nothing new to decide).

        Raising acts ``delay_s`` after the draw crossed; lowering also waits out the hold. A decision
        already pending keeps its time, so readings in between do not postpone it.
        """
        if self.pending_at is not None:
            return None
        wanted = self.wanted(watts)
        if wanted == self.level:
            return None
        at = now + self.thresholds.delay_s
        self.pending_at = at if wanted > self.level else max(at, self.level_since + self.thresholds.hold_s)
        return self.pending_at

    def due(self, now: float) -> bool:
        """Whether a pending decision is due at ``now`` (for callers that poll, like the operator's timer)."""
        return self.pending_at is not None and now >= self.pending_at

    def decide(self, now: float, watts: float) -> bool:
        """The controller acts on the draw now: returns whether the level changed."""
        self.pending_at = None
        wanted = self.wanted(watts)
        if wanted == self.level or (wanted < self.level and now < self.level_since + self.thresholds.hold_s):
            return False
        self.cap_events += wanted > self.level
        self.level, self.level_since = wanted, now
        return True

    def cap_fraction(self, device: Device) -> float | None:
        """The cap (a fraction of TDP) ``device`` gets at the current level; None: uncapped."""
        p = self.thresholds
        if self.level == Level.ALL:
            return p.all_cap
        if self.level == Level.LOW and (device.priority is None or device.priority < p.low_priority_below):
            return p.low_cap
        return None

    def caps(self, devices: list[Device]) -> list[Cap]:
        """Every capped device and its limit in watts, least urgent first (the order to apply them in)."""
        ordered = sorted(devices, key=lambda d: (-math.inf if d.priority is None else d.priority, d.id))
        out = []
        for d in ordered:
            fraction = self.cap_fraction(d)
            if fraction is not None:
                out.append(Cap(d.id, fraction * d.tdp_watts, self.level))
        return out
