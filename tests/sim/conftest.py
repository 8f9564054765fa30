"""Builders shared by the simulator tests."""

from __future__ import annotations

import pytest

from tessera.sim.core import PowerPolicy, Simulator
from tessera.sim.fleet import REFERENCE_CLASS, engine_classes
from tessera.sim.workload import TEXT2SQL_STEPS, Request
from tessera.workers.scheduling import make_policy

MODEL = "llama-3-1-70b"


@pytest.fixture(scope="session")
def classes():
    return engine_classes(["a100-80gb", "a6000", "l40s", "h200"], MODEL)


@pytest.fixture
def simulator(classes):
    """simulator(fleet, policy="wb-urgency", steps=..., power=None, **kw) -> Simulator"""

    def build(fleet, policy="wb-urgency", steps=TEXT2SQL_STEPS, power: PowerPolicy | None = None, **kwargs):
        dispatcher, queues = make_policy(policy, alpha=0.2)
        return Simulator(classes, classes[REFERENCE_CLASS], fleet, steps, dispatcher, queues, power=power, **kwargs)

    return build


def mean_request(steps=TEXT2SQL_STEPS, arrival=0.0, slo=1e6, rid="r0") -> Request:
    """A request whose every call has exactly the step's mean token counts."""
    groups = []
    for st in steps:
        call = (int(st.input_tokens), int(st.output_tokens))
        if st.parallel:
            groups.append((st.name, True, [call] * st.calls))
        else:
            groups += [(st.name, False, [call])] * st.calls
    return Request(rid, "t", 0, arrival, arrival + slo, groups)
