"""Waiting time at a percentile in an M/M/c queue (Erlang C).

A stage's replicas x batch slots are the c servers; calls arrive as a Poisson stream at the
planned request rate x fan-out x iterations. M/M/c over-states the wait of the (nearly
deterministic) LLM service times, so the plan errs on the safe side.
"""

from __future__ import annotations

import math

NEGLIGIBLE = 1e-12  # Erlang B below this: waiting is impossible in practice


def erlang_c_by_servers(offered_load: float, server_counts: list[int]) -> dict[int, float]:
    """Probability that a call waits, for each server count (one pass of the Erlang B recursion).

    ``offered_load`` a = arrival rate x mean service time. Counts with a >= c (unstable) map to 1.
    """
    out: dict[int, float] = {}
    wanted = sorted(set(server_counts))
    if not wanted:
        return out
    erlang_b = 1.0
    k = 0
    for c in wanted:
        while k < c:
            k += 1
            erlang_b = offered_load * erlang_b / (k + offered_load * erlang_b)
            if k > offered_load and erlang_b < NEGLIGIBLE:
                break  # only shrinks from here on
        if offered_load >= c:
            out[c] = 1.0
        elif erlang_b < NEGLIGIBLE and k <= c:
            out[c] = 0.0
        else:
            rho = offered_load / c
            out[c] = erlang_b / (1 - rho * (1 - erlang_b))
    return out


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
