"""Waiting time at a percentile in an M/M/c queue (Erlang C).

A stage's replicas x batch slots are the c servers; calls arrive as a Poisson stream at the
planned request rate x fan-out x iterations. M/M/c over-states the wait of the (nearly
deterministic) LLM service times, so the plan errs on the safe side.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, pdtr



def erlang_b(servers: np.ndarray, offered_load: float) -> np.ndarray:
    """Blocking probability of M/M/c/c for each c: the Poisson(a) pmf at c over its cdf up to c."""
    if offered_load <= 0:
        return np.zeros(len(servers))
    cdf = pdtr(servers, offered_load)
    log_pmf = servers * math.log(offered_load) - offered_load - gammaln(servers + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(cdf > 0, np.minimum(1.0, np.exp(log_pmf) / cdf), 1.0)


def erlang_c_by_servers(offered_load: float, server_counts: list[int]) -> dict[int, float]:
    """Probability that a call waits, for each server count. ``offered_load`` a = arrival rate x mean
    service time; counts with a >= c (unstable) map to 1."""
    counts = np.array(sorted(set(server_counts)), dtype=float)
    if not len(counts):
        return {}
    b = erlang_b(counts, offered_load)
    with np.errstate(divide="ignore", invalid="ignore"):
        c_prob = np.where(offered_load < counts, b / (1 - offered_load / counts * (1 - b)), 1.0)
    return {int(c): float(p) for c, p in zip(counts, c_prob)}


def erlang_c(servers: int, offered_load: float) -> float:
    return erlang_c_by_servers(offered_load, [servers])[servers]


def wait_quantile(servers: int, arrival_rate: float, service_s: float, quantile: float,
                  wait_probability: float | None = None) -> float:
    """The ``quantile`` of the waiting time: P(W > t) = C exp(-(c mu - lambda) t). Infinite when unstable."""
    if arrival_rate <= 0:
        return 0.0
    drain = servers / service_s - arrival_rate
    if drain <= 0:
        return math.inf
    c_prob = erlang_c(servers, arrival_rate * service_s) if wait_probability is None else wait_probability
    tail = 1 - quantile
    if c_prob <= tail:
        return 0.0
    return math.log(c_prob / tail) / drain


def mean_wait(servers: int, arrival_rate: float, service_s: float) -> float:
    drain = servers / service_s - arrival_rate
    if drain <= 0:
        return math.inf
    return erlang_c(servers, arrival_rate * service_s) / drain
