"""Queueing sanity: one engine serving one-call requests behaves as an M/M/1 queue."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.sim.core import step_costs
from tessera.sim.workload import Request, Step

MEAN_TOKENS = 5_000  # the exponential tail stays far below the A100's KV room
STEP = Step("serve", 1, MEAN_TOKENS, 1, reference_s=10.0)  # prefill-bound calls: one server, FCFS


@pytest.mark.parametrize("seed", [1, 2])
def test_mm1_mean_wait_matches_theory_at_rho_07(simulator, classes, seed):
    """Exponential prompt lengths make exponential service; the wait is arrival to prefill start.

    The one-token decode shares the engine with the next prefill, so the server's work per call
    is the prefill plus that decode: the theory's service time counts both.
    """
    rng = np.random.default_rng(seed)
    costs = step_costs((STEP,), {"a100-80gb": classes["a100-80gb"]}, classes["a100-80gb"])["serve"]
    service_mean = MEAN_TOKENS * costs.prefill_per_token["a100-80gb"] + costs.decode_per_token["a100-80gb"]
    rate = 0.7 / service_mean
    count = 100_000
    arrivals = np.cumsum(rng.exponential(1 / rate, count))
    tokens = np.maximum(1, np.round(rng.exponential(MEAN_TOKENS, count))).astype(int)
    requests = [Request(f"r{i}", "t", 0, float(a), float(a) + 1e9, [("serve", False, [(int(n), 1)])])
                for i, (a, n) in enumerate(zip(arrivals, tokens))]
    result = simulator(["a100-80gb"], policy="rr-fcfs", steps=(STEP,)).run(requests)
    theory = 0.7 / (1 / service_mean - rate)  # rho / (mu - lambda)
    assert result.finished == count
    assert result.first_waits_s.mean() == pytest.approx(theory, rel=0.05)
