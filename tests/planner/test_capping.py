"""The shared POLCA controller, replayed over power traces the way the operator polls it.

Each trace is a table of per-device draws sampled every 0.5 s (uncapped watts, shaped after the
H200 readings in docs/calibration.md: 79 W idle, 400-690 W decoding, ~700 W in prefill); a capped
device draws min(its uncapped draw, its cap). Four 700 W devices share 2,000 W.
"""

from __future__ import annotations

import pytest

from tessera.api.power import CappingPolicy
from tessera.planner.capping import Controller, Device, Level, Thresholds

PERIOD_S = 0.5
BUDGET_W = 2000.0
DEVICES = [Device("lo-a", 700, 0), Device("lo-b", 700, 0), Device("hi-a", 700, 2), Device("hi-b", 700, 1)]


def trace(*segments: tuple[float, tuple[float, float, float, float]]) -> list[tuple[float, ...]]:
    """(seconds, per-device watts) segments as samples every PERIOD_S."""
    out = []
    for seconds, watts in segments:
        out += [watts] * int(seconds / PERIOD_S)
    return out


IDLE = (79, 79, 79, 79)
DECODE = (410, 430, 400, 420)  # 1,660 W: below T1 (1,700 W), above T1 - margin (1,600 W)
BURST = (700, 690, 600, 560)  # 2,550 W: prefill on both low-priority devices
WARM = (480, 470, 440, 450)  # 1,840 W: above T1, below T2
TRACES = {
    "burst above T2": trace((5, IDLE), (10, DECODE), (20, BURST), (30, DECODE), (15, IDLE)),
    "above T1 only": trace((5, DECODE), (30, WARM), (30, DECODE)),
    "oscillating around T1": trace(*[(3.0, WARM), (3.0, DECODE)] * 10),
    "repeated bursts": trace(*[(3.0, BURST), (4.0, DECODE)] * 10),
}


def replay(samples, thresholds: Thresholds):
    """Poll the controller every PERIOD_S as the operator does; returns per-sample (time, draw, caps) and the controller."""
    controller = Controller(thresholds)
    caps: dict[str, float] = {}
    timeline = []
    for i, raw in enumerate(samples):
        now = i * PERIOD_S
        draw = sum(min(w, caps.get(d.id, w)) for w, d in zip(raw, DEVICES))
        controller.observe(now, draw)
        if controller.due(now) and controller.decide(now, draw):
            caps = {c.device: c.watts for c in controller.caps(DEVICES)}
            draw = sum(min(w, caps.get(d.id, w)) for w, d in zip(raw, DEVICES))
        timeline.append((now, draw, dict(caps), controller.level))
    return timeline, controller


def thresholds(**kw) -> Thresholds:
    return Thresholds.from_policy(BUDGET_W, CappingPolicy(**kw))


@pytest.mark.parametrize("name", TRACES)
def test_the_group_is_back_under_budget_within_the_stated_delay(name):
    policy = thresholds(decision_delay_seconds=1.0)
    timeline, _ = replay(TRACES[name], policy)
    over_since = None
    for now, draw, _, _ in timeline:
        if draw > BUDGET_W:
            over_since = now if over_since is None else over_since
            assert now - over_since <= policy.delay_s + PERIOD_S, f"{name}: over budget from {over_since} s to {now} s"
        else:
            over_since = None


@pytest.mark.parametrize("name", TRACES)
def test_caps_go_to_the_least_urgent_devices_first(name):
    timeline, controller = replay(TRACES[name], thresholds())
    for _, _, caps, level in timeline:
        if level == Level.LOW:
            assert set(caps) == {"lo-a", "lo-b"}, caps  # priority < lowPriorityBelow (1) only
        if level == Level.ALL:
            assert set(caps) == {d.id for d in DEVICES}
    ordered = [c.device for c in controller.caps(DEVICES)]
    assert ordered[:2] == ["lo-a", "lo-b"] or not ordered


def test_above_t2_everyone_is_capped_to_the_lower_level_and_the_caps_lift_after():
    timeline, controller = replay(TRACES["burst above T2"], thresholds())
    levels = [level for *_, level in timeline]
    assert Level.ALL in levels and levels[-1] == Level.NONE
    capped = next(caps for *_, caps, level in timeline if level == Level.ALL)
    assert capped == {d.id: 0.6 * 700 for d in DEVICES}
    assert controller.cap_events >= 1


@pytest.mark.parametrize("name", TRACES)
def test_caps_never_flap(name):
    """A level, once set, holds for minCapSeconds before it is lowered; so at most one lowering per hold."""
    policy = thresholds(min_cap_seconds=10)
    timeline, _ = replay(TRACES[name], policy)
    changes = [(now, level) for (now, _, _, level), (_, _, _, before) in zip(timeline[1:], timeline) if level != before]
    raised_at = {}
    last = (0.0, Level.NONE)
    for now, level in changes:
        if level < last[1]:
            assert now - raised_at[last[1]] >= policy.hold_s, f"{name}: lowered {now - raised_at[last[1]]:.1f} s after set"
        raised_at[level] = now
        last = (now, level)
    assert len(changes) <= 2 * (len(timeline) * PERIOD_S / policy.hold_s + 1)


def test_without_the_hold_an_oscillating_draw_would_flap():
    """The test above can fail: with no hold the controller follows every swing across T1."""
    timeline, _ = replay(TRACES["oscillating around T1"], thresholds(min_cap_seconds=0, uncap_margin_percent=0))
    changes = sum(1 for (_, _, _, a), (_, _, _, b) in zip(timeline, timeline[1:]) if a != b)
    assert changes > 2 * (len(timeline) * PERIOD_S / 10 + 1)


@pytest.mark.parametrize("draw,level,wanted", [
    (1600, Level.NONE, Level.NONE), (1800, Level.NONE, Level.LOW), (1950, Level.NONE, Level.ALL),
    (1650, Level.LOW, Level.LOW), (1550, Level.LOW, Level.NONE), (1850, Level.ALL, Level.ALL),
    (1750, Level.ALL, Level.LOW),
])
def test_the_thresholds_and_the_hysteresis_margin(draw, level, wanted):
    controller = Controller(thresholds())
    controller.level = level
    assert controller.wanted(draw) == wanted


def test_a_pending_decision_keeps_its_time_and_a_lift_waits_out_the_hold():
    controller = Controller(thresholds(decision_delay_seconds=2, min_cap_seconds=10))
    assert controller.observe(0.0, 1900) == 2.0
    assert controller.observe(1.0, 1950) is None and not controller.due(1.5) and controller.due(2.0)
    assert controller.decide(2.0, 1950) and controller.level == Level.ALL
    assert controller.observe(3.0, 1000) == 12.0  # set at 2 s, held 10 s
    assert not controller.decide(5.0, 1000)  # too early: the hold
