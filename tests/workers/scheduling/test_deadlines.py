"""Per-stage deadline shares and urgency (HEXGEN formulas of REFERENCE.md)."""

from __future__ import annotations

import pytest

from tessera.workers.scheduling import absolute_stage_deadline_s, stage_deadline_s, urgency

from .factories import call


@pytest.mark.parametrize(
    ("kwargs", "share"),
    [
        # the last stage gets all the time left
        ({"deadline": 100.0, "started": 0.0, "mean": 10.0, "remaining": ()}, 100.0),
        # time left shared in proportion to mean stage times: 10 / (10 + 30)
        ({"deadline": 100.0, "started": 20.0, "mean": 10.0, "remaining": (20.0, 10.0)}, 20.0),
        # an already missed deadline gives a negative share
        ({"deadline": 50.0, "started": 60.0, "mean": 5.0, "remaining": (5.0,)}, -5.0),
        # no mean estimate: equal share with each remaining stage
        ({"deadline": 90.0, "started": 0.0, "mean": 0.0, "remaining": (1.0, 7.0)}, 30.0),
    ],
)
def test_stage_deadline_share(kwargs, share):
    c = call(**kwargs)
    assert stage_deadline_s(c) == pytest.approx(share)
    assert absolute_stage_deadline_s(c) == pytest.approx(kwargs["started"] + share)


@pytest.mark.parametrize(
    ("now", "hw", "priority", "weight", "expected"),
    [
        # T_hw − (SLO_stage − elapsed_in_stage) = 10 − (20 − 0)
        (20.0, "a100", 0, 0.0, -10.0),
        # waiting 5 s more costs 5 s of slack
        (25.0, "a100", 0, 0.0, -5.0),
        # slower hardware is more urgent: less slack once its run time counts
        (20.0, "a6000", 0, 0.0, -1.0),
        # priority adds urgency only with a weight
        (20.0, "a100", 3, 0.0, -10.0),
        (20.0, "a100", 3, 2.0, -4.0),
    ],
)
def test_urgency(now, hw, priority, weight, expected):
    c = call(deadline=100.0, started=20.0, mean=10.0, remaining=(20.0, 10.0), priority=priority)
    assert urgency(c, now, hw, priority_weight_s=weight) == pytest.approx(expected)


def test_unknown_class_takes_slowest_estimate():
    assert call(est={"a100": 1.0, "l40s": 4.0}).est_seconds("tpu") == 4.0
