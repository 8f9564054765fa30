"""Engine model: calibration to REFERENCE.md's step times, batching, KV admission."""

from __future__ import annotations

import pytest

from tessera.sim.workload import TEXT2SQL_STEPS, Step, critical_path_s

from .conftest import mean_request

WORKFLOW_A100_S = 37.52  # REFERENCE.md: about 37.5 s per query on an A100


def test_reference_workflow_time():
    assert critical_path_s(TEXT2SQL_STEPS) == pytest.approx(WORKFLOW_A100_S)


@pytest.mark.parametrize(("engine", "factor"), [("a100-80gb", 1.0), ("a6000", 1.9), ("l40s", 1.8)])
def test_a_lone_request_takes_the_reference_time(simulator, engine, factor):
    # four engines, so the four parallel candidates each run alone
    result = simulator([engine] * 4).run([mean_request()])
    assert result.latencies_s[0] == pytest.approx(WORKFLOW_A100_S * factor, rel=1e-6)


def test_batching_shares_an_engine_better_than_serial(simulator):
    """Two decode-heavy calls at once finish sooner than one after the other, later than one alone."""
    step = (Step("chat", 1, 100, 500, reference_s=20.0),)
    one = simulator(["a100-80gb"], steps=step).run([mean_request(step)]).latencies_s[0]
    both = simulator(["a100-80gb"], steps=step).run([mean_request(step, rid="a"), mean_request(step, rid="b")])
    assert one < both.latencies_s.max() < 2 * one


def test_kv_room_limits_concurrency(simulator, classes):
    """An A6000 holds two candidate-sized calls at once, never three: the third waits for room."""
    step = (Step("generate-candidate", 1, 11_748, 678, reference_s=18.24),)
    tokens = 11_748 + 678
    assert 2 * tokens <= classes["a6000"].kv_tokens < 3 * tokens
    result = simulator(["a6000"], steps=step).run([mean_request(step, rid=f"r{i}") for i in range(3)])
    first, second, third = sorted(result.first_waits_s)
    assert first == 0.0
    assert third >= min(result.latencies_s) - 1e-6  # the third starts only once one has finished


def test_a_call_that_fits_no_engine_is_a_clear_error(simulator):
    step = (Step("huge", 1, 200_000, 10, reference_s=1.0),)
    with pytest.raises(ValueError, match="needs 200010 KV tokens"):
        simulator(["a6000"], steps=step).run([mean_request(step)])
