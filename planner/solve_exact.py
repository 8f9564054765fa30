"""The ``exact`` solver: a mixed-integer linear program solved by HiGHS (through scipy)."""

from __future__ import annotations

import math
import time

import numpy as np

from tessera.api.workflow import Objective
from tessera.planner.problem import Problem
from tessera.planner.solution import Relax, Solution, limits

TIE_BREAK = 1e-6  # weight of the secondary objective (dollars under `latency`, latency under the others)


def solve_exact(problem: Problem, relax: Relax = Relax(), time_limit_s: float = 60.0) -> Solution:
    """x[s,o] binary picks option o of stage s; t[s] is the finish time of s at the SLO percentile,
    T >= t[s] for all s, T <= SLO; z[s,k] (a sum of x) says s runs on class k. Minimizes $/h, watts, or T."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    start = time.perf_counter()
    n_stages = len(problem.names)
    if any(not opts for opts in problem.options):
        return Solution(None, time.perf_counter() - start)
    slo, capacity, group_limits = limits(problem, relax)
    x_index = []  # (stage, option) per column
    first = []
    for s, opts in enumerate(problem.options):
        first.append(len(x_index))
        x_index += [(s, o) for o in range(len(opts))]
    n_x = len(x_index)
    t_col = n_x  # t[s] at t_col + s
    end_col = t_col + n_stages
    n_vars = end_col + 1

    rows, cols, vals, lo, hi = [], [], [], [], []
    row = 0

    def add(entries: list[tuple[int, float]], lower: float, upper: float) -> None:
        nonlocal row
        for c, v in entries:
            rows.append(row)
            cols.append(c)
            vals.append(v)
        lo.append(lower)
        hi.append(upper)
        row += 1

    def on_class(s: int, classes: set[str]) -> list[int]:
        return [first[s] + o for o, opt in enumerate(problem.options[s]) if opt.hardware_class in classes]

    for s, opts in enumerate(problem.options):  # one option per stage
        add([(first[s] + o, 1.0) for o in range(len(opts))], 1, 1)
    for v in range(n_stages):
        lat = [(first[v] + o, -opt.latency_slo_s) for o, opt in enumerate(problem.options[v])]
        add([(t_col + v, 1.0)] + lat, 0, np.inf)  # t[v] >= L[v]
        for u in problem.preds[v]:
            add([(t_col + v, 1.0), (t_col + u, -1.0)] + lat, 0, np.inf)  # t[v] >= t[u] + L[v]
            # and + transfer(k, k') when u runs on k and v on k' != k: the term tau (z[u,k] + z[v,R] - 1)
            # is tau when both hold and <= 0 otherwise; receivers R with the same tau share one row
            receivers = {o.hardware_class for o in problem.options[v]}
            for k in sorted({o.hardware_class for o in problem.options[u]}):
                by_tau: dict[float, set[str]] = {}
                for k2 in receivers - {k}:
                    by_tau.setdefault(problem.transfer_s(u, k, k2), set()).add(k2)
                for tau, group in by_tau.items():
                    add([(t_col + v, 1.0), (t_col + u, -1.0)] + lat + [(c, -tau) for c in on_class(u, {k})]
                        + [(c, -tau) for c in on_class(v, group)], -tau, np.inf)
        add([(end_col, 1.0), (t_col + v, -1.0)], 0, np.inf)
    for cls, limit in capacity.items():
        entries = [(i, float(problem.options[s][o].devices[cls])) for i, (s, o) in enumerate(x_index)
                   if cls in problem.options[s][o].devices]
        if entries and math.isfinite(limit):
            add(entries, -np.inf, limit)
    for group, (expected_limit, peak_limit) in zip(problem.groups, group_limits):
        if not math.isfinite(expected_limit):
            continue
        expected, peak = [], []
        for i, (s, o) in enumerate(x_index):
            opt = problem.options[s][o]
            e = sum(w for c, w in opt.watts_by_class.items() if c in group.classes)
            p = sum(w for c, w in opt.peak_watts_by_class.items() if c in group.classes) * group.cap_fraction
            if e:
                expected.append((i, e))
            if p:
                peak.append((i, p))
        if expected:
            add(expected, -np.inf, expected_limit)
        if peak:
            add(peak, -np.inf, peak_limit)

    c = np.zeros(n_vars)
    separable = np.array([problem.objective_value(problem.options[s][o]) for s, o in x_index])
    if problem.objective is Objective.latency:
        c[end_col] = 1.0
        c[:n_x] = TIE_BREAK * separable / max(1.0, separable.max(initial=1.0))
    else:
        c[:n_x] = separable
        c[end_col] = TIE_BREAK * max(1.0, separable.max(initial=1.0))
    integrality = np.zeros(n_vars)
    integrality[:n_x] = 1
    lower = np.zeros(n_vars)
    upper = np.full(n_vars, np.inf)
    upper[:n_x] = 1
    upper[end_col] = slo
    matrix = coo_matrix((vals, (rows, cols)), shape=(row, n_vars)).tocsr()
    result = milp(c, constraints=LinearConstraint(matrix, lo, hi), integrality=integrality,
                  bounds=Bounds(lower, upper), options={"time_limit": time_limit_s, "mip_rel_gap": 1e-7})
    if result.x is None:
        return Solution(None, time.perf_counter() - start)
    choice = [0] * n_stages
    for i, (s, o) in enumerate(x_index):
        if result.x[i] > 0.5:
            choice[s] = o
    return Solution(choice, time.perf_counter() - start)
