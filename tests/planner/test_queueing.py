"""Erlang C and the waiting time at a percentile, against closed forms."""

from __future__ import annotations

import math

import pytest

from tessera.planner.queueing import erlang_c, erlang_c_by_servers, mean_wait, wait_quantile


def test_erlang_c_known_values():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 3.0) == 1.0  # unstable
    # c = 4, a = 3: B = (81/24) / (1 + 3 + 9/2 + 27/6 + 81/24); C = B / (1 - 0.75 (1 - B))
    b = 3.375 / 16.375
    assert erlang_c(4, 3.0) == pytest.approx(b / (1 - 0.75 * (1 - b)))


def test_many_servers_at_once_agree_with_one_at_a_time():
    table = erlang_c_by_servers(12.0, [13, 16, 20, 64])
    for c, p in table.items():
        assert p == pytest.approx(erlang_c(c, 12.0))
    assert table[13] > table[16] > table[20] > table[64]


def test_wait_quantile_mm1():
    # lambda 0.5, mu 1: P(W > t) = 0.5 exp(-0.5 t) -> p99 at 2 ln 50
    assert wait_quantile(1, 0.5, 1.0, 0.99) == pytest.approx(2 * math.log(50))
    assert wait_quantile(1, 0.5, 1.0, 0.5) == 0.0  # half the calls never wait
    assert mean_wait(1, 0.5, 1.0) == pytest.approx(1.0)  # rho / (mu - lambda)
    assert wait_quantile(1, 2.0, 1.0, 0.99) == math.inf
