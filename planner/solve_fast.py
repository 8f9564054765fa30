"""The ``fast`` solver: Lagrangian start points, critical-path repair, then local search.

Deterministic: its effort is a count of option evaluations, not a clock, and its random kicks are seeded.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np

from tessera.api.workflow import Objective
from tessera.planner.problem import Problem
from tessera.planner.solution import Relax, Solution, limits, objective_of


class _Search:
    """Incremental state: device and watt totals, and head/tail path lengths for O(degree) latency checks."""

    def __init__(self, problem: Problem, relax: Relax):
        self.p = problem
        self.slo, self.capacity, self.group_limits = limits(problem, relax)
        self.n = len(problem.names)
        self.value = [[_secondary(problem, o) for o in opts] for opts in problem.options]
        self.group_of: list[dict[str, float]] = [
            {c: g.cap_fraction for c in g.classes} for g in problem.groups
        ]

    # resources
    def usage(self, choice: list[int]) -> tuple[dict[str, float], list[list[float]]]:
        dev: dict[str, float] = {}
        watts = [[0.0, 0.0] for _ in self.p.groups]
        for s, o in enumerate(choice):
            self._add(dev, watts, self.p.options[s][o], 1)
        return dev, watts

    def _add(self, dev, watts, opt, sign) -> None:
        for c, n in opt.devices.items():
            dev[c] = dev.get(c, 0) + sign * n
        for g, member in enumerate(self.group_of):
            watts[g][0] += sign * sum(w for c, w in opt.watts_by_class.items() if c in member)
            watts[g][1] += sign * sum(w * member[c] for c, w in opt.peak_watts_by_class.items() if c in member)

    def move(self, dev, watts, choice: list[int], s: int, o: int) -> None:
        """Put stage ``s`` on option ``o``, keeping the device and watt tallies in step."""
        self._add(dev, watts, self.p.options[s][choice[s]], -1)
        self._add(dev, watts, self.p.options[s][o], 1)
        choice[s] = o

    def violation(self, dev, watts) -> float:
        """Total relative excess over every resource limit (0 when all hold)."""
        excess = 0.0
        for c, n in dev.items():
            limit = self.capacity.get(c, 0)
            if n > limit:
                excess += (n - limit) / max(1.0, limit if math.isfinite(limit) else 1.0)
        for (e, p), (le, lp) in zip(watts, self.group_limits):
            if e > le:
                excess += (e - le) / max(1.0, le)
            if p > lp:
                excess += (p - lp) / max(1.0, lp)
        return excess

    def over_classes(self, dev, watts) -> set[str]:
        """Classes whose devices exceed their count, or that draw from an exceeded power group."""
        hot = {c for c, n in dev.items() if n > self.capacity.get(c, 0)}
        for g, ((e, p), (le, lp)) in enumerate(zip(watts, self.group_limits)):
            if e > le or p > lp:
                hot |= set(self.group_of[g])
        return hot

    def move_fits(self, dev, watts, old, new) -> bool:
        for c, n in new.devices.items():
            if dev.get(c, 0) - old.devices.get(c, 0) + n > self.capacity.get(c, 0):
                return False
        for g, member in enumerate(self.group_of):
            le, lp = self.group_limits[g]
            de = sum(w for c, w in new.watts_by_class.items() if c in member) - sum(
                w for c, w in old.watts_by_class.items() if c in member)
            dp = sum(w * member[c] for c, w in new.peak_watts_by_class.items() if c in member) - sum(
                w * member[c] for c, w in old.peak_watts_by_class.items() if c in member)
            if (de > 0 and watts[g][0] + de > le * (1 + 1e-9)) or (dp > 0 and watts[g][1] + dp > lp * (1 + 1e-9)):
                return False
        return True

    # latency
    def paths(self, choice: list[int]) -> tuple[list[float], list[float]]:
        """head[s]: longest path finishing s; tail[s]: longest path after s finishes (transfers included)."""
        p = self.p
        head = [0.0] * self.n
        for s in range(self.n):
            cls = p.options[s][choice[s]].hardware_class
            start = max((head[u] + p.transfer_s(u, p.options[u][choice[u]].hardware_class, cls) for u in p.preds[s]),
                        default=0.0)
            head[s] = start + p.options[s][choice[s]].latency_slo_s
        tail = [0.0] * self.n
        for s in reversed(range(self.n)):
            cls = p.options[s][choice[s]].hardware_class
            tail[s] = max((p.transfer_s(s, cls, p.options[v][choice[v]].hardware_class)
                           + p.options[v][choice[v]].latency_slo_s + tail[v] for v in p.succs[s]), default=0.0)
        return head, tail

    def through(self, choice, head, tail, s, opt) -> float:
        """Longest path through stage s if s took ``opt`` (others unchanged)."""
        p = self.p
        cls = opt.hardware_class
        start = max((head[u] + p.transfer_s(u, p.options[u][choice[u]].hardware_class, cls) for u in p.preds[s]),
                    default=0.0)
        after = max((p.transfer_s(s, cls, p.options[v][choice[v]].hardware_class) + p.options[v][choice[v]].latency_slo_s
                     + tail[v] for v in p.succs[s]), default=0.0)
        return start + opt.latency_slo_s + after


def _secondary(problem: Problem, opt) -> float:
    return opt.usd_per_hour if problem.objective is Objective.latency else problem.objective_value(opt)


def _extra_cost(problem: Problem, old, new) -> float:
    """What moving a stage from option ``old`` to ``new`` adds to the objective (0 for a saving)."""
    return max(0.0, _secondary(problem, new) - _secondary(problem, old))


WORK_BUDGET = 150_000  # option evaluations the local search may spend (a count, not a clock: plans are deterministic)


def solve_fast(problem: Problem, relax: Relax = Relax(), work_budget: int = WORK_BUDGET) -> Solution:
    """Start points: a Lagrangian pick (dollars + lambda x latency, with prices on exceeded resources) and,
    on small graphs, the cheapest and the fastest options; each is repaired, then improved by local search."""
    start = time.perf_counter()
    if any(not opts for opts in problem.options):
        return Solution(None, time.perf_counter() - start)
    best: list[int] | None = None
    budget = _Budget(work_budget)
    candidates = _lagrangian(problem, _Search(problem, relax))
    if len(problem.names) <= SMALL_GRAPH:
        candidates += [_initial(problem, "cheapest"), _initial(problem, "fastest")]
    for candidate in candidates:
        search = _Search(problem, relax)
        choice = _repair(problem, search, list(candidate))
        if choice is None:
            continue
        choice = _improve(problem, search, choice, budget)
        if best is None or _better(problem, choice, best):
            best = choice
    if best is not None and problem.objective is not Objective.latency:
        best = _perturb_and_improve(problem, relax, best, budget)
    return Solution(best, time.perf_counter() - start)


def _perturb_and_improve(problem: Problem, relax: Relax, best: list[int], budget: "_Budget") -> list[int]:
    """Iterated local search: move a few random stages to random options, repair, improve; keep what is better.
    Finds the moves of several stages at once (free devices on one class for another stage) that single moves miss.
    Seeded: the same problem gives the same plan."""
    rng = random.Random(len(problem.names))
    size = sum(len(opts) for opts in problem.options)
    while budget.spend(size):
        trial = list(best)
        cheapest = rng.random() < 0.5  # half the kicks drop stages to their cheapest option, for repair to re-spend
        for s in rng.sample(range(len(trial)), min(len(trial), rng.randint(2, 4))):
            if cheapest:
                trial[s] = min(range(len(problem.options[s])), key=lambda o: (_secondary(problem, problem.options[s][o]), o))
            else:
                trial[s] = rng.randrange(len(problem.options[s]))
        search = _Search(problem, relax)
        repaired = _repair(problem, search, trial)
        if repaired is None:
            continue
        improved = _improve(problem, search, repaired, budget)
        if _better(problem, improved, best):
            best = improved
    return best


SMALL_GRAPH = 30  # stages; up to here the fast solver also tries the cheapest and the fastest start


def _lagrangian(problem: Problem, search: _Search, rounds: int = 12, reweightings: int = 4) -> list[list[int]]:
    """Per stage the option minimizing value + lam x w[s] x latency + resource prices, lam bisected to the
    smallest that meets the SLO; resources over their limit get pricier each round (subgradient steps).
    Then the stage weights w follow criticality (the longest path through a stage over the longest path,
    to the 4th power), so slack off the critical path buys cheaper options. Returns every pick made."""
    values = [np.array(v) for v in search.value]
    latency = [np.array([o.latency_slo_s for o in opts]) for opts in problem.options]
    classes = sorted(search.capacity)
    devices = [np.array([[o.devices.get(c, 0) for c in classes] for o in opts], dtype=float) for opts in problem.options]
    group_watts = [np.array([[sum(w for c, w in o.watts_by_class.items() if c in g.classes) for g in problem.groups]
                             for o in opts]).reshape(len(opts), len(problem.groups)) for opts in problem.options]
    scale = max(1e-9, float(np.median([v.mean() for v in values])))
    device_price = np.zeros(len(classes))
    watt_price = np.zeros(len(problem.groups))
    weight = np.ones(search.n)

    def pick(lam: float) -> list[int]:
        return [int(np.argmin(values[s] + lam * weight[s] * latency[s] + devices[s] @ device_price
                              + group_watts[s] @ watt_price)) for s in range(search.n)]

    def meet_slo(choice: list[int]) -> list[int]:
        if not math.isfinite(search.slo) or problem.critical_path(choice)[0] <= search.slo:
            return choice
        lo, hi = 0.0, scale
        while problem.critical_path(pick(hi))[0] > search.slo and hi < scale * 1e6:
            lo, hi = hi, hi * 8
        for _ in range(14):
            mid = (lo + hi) / 2
            if problem.critical_path(pick(mid))[0] > search.slo:
                lo = mid
            else:
                hi = mid
        return pick(hi)

    choice = meet_slo(pick(0.0))
    for _ in range(rounds):
        dev, watts = search.usage(choice)
        over_devices = np.array([max(0.0, dev.get(c, 0) - search.capacity[c]) / max(1.0, search.capacity[c])
                                 if math.isfinite(search.capacity[c]) else 0.0 for c in classes])
        over_watts = np.array([max(0.0, e - le) / max(1.0, le) if math.isfinite(le) else 0.0
                               for (e, _), (le, _) in zip(watts, search.group_limits)])
        if not over_devices.any() and not over_watts.any():
            break
        device_price += over_devices * scale
        if over_watts.any():
            watt_price += over_watts * scale / max(1.0, float(np.mean([w.mean() for w in group_watts])))
        choice = meet_slo(pick(0.0))
    picks = [choice]
    if not math.isfinite(search.slo):
        return picks
    for _ in range(reweightings):
        head, tail = search.paths(choice)
        longest = max(head)
        through = np.array([head[s] + tail[s] for s in range(search.n)])
        weight = np.maximum(1e-3, through / max(longest, 1e-12)) ** 4
        choice = meet_slo(pick(0.0))
        if choice in picks:
            break
        picks.append(choice)
    return picks


class _Budget:
    def __init__(self, units: int):
        self.left = units

    def spend(self, units: int) -> bool:
        """False once the budget is used up."""
        self.left -= units
        return self.left > 0


def _better(problem: Problem, a: list[int], b: list[int]) -> bool:
    return objective_of(problem, a) < objective_of(problem, b) - 1e-12


def _initial(problem: Problem, pick: str) -> list[int]:
    if pick == "fastest":
        return [min(range(len(opts)), key=lambda o: (opts[o].latency_slo_s, _secondary(problem, opts[o])))
                for opts in problem.options]
    return [min(range(len(opts)), key=lambda o: (_secondary(problem, opts[o]), opts[o].latency_slo_s))
            for opts in problem.options]


def _repair(problem: Problem, search: _Search, choice: list[int]) -> list[int] | None:
    """Make resources fit (least excess per extra cost), then pull the critical path under the SLO."""
    dev, watts = search.usage(choice)
    excess = search.violation(dev, watts)

    def relieving(hot: set[str]):
        for s in range(search.n):
            old = problem.options[s][choice[s]]
            if hot.isdisjoint(old.devices):
                continue  # moving this stage cannot relieve an exceeded limit
            for o, new in enumerate(problem.options[s]):
                if o == choice[s]:
                    continue
                search._add(dev, watts, old, -1)
                search._add(dev, watts, new, 1)
                reduced = excess - search.violation(dev, watts)
                search._add(dev, watts, new, -1)
                search._add(dev, watts, old, 1)
                if reduced > 1e-12:
                    yield reduced / (_extra_cost(problem, old, new) + 1e-3), s, o

    while excess > 0:
        if not _make_best_move(search, dev, watts, choice, relieving(search.over_classes(dev, watts))):
            return None
        excess = search.violation(dev, watts)

    def shortening(length: float, path: list[int]):
        head, tail = search.paths(choice)
        for s in path:
            old = problem.options[s][choice[s]]
            now = search.through(choice, head, tail, s, old)
            for o, new in enumerate(problem.options[s]):
                if o == choice[s] or not search.move_fits(dev, watts, old, new):
                    continue
                gain = now - search.through(choice, head, tail, s, new)
                if gain > 1e-12:
                    yield min(gain, length - search.slo) / (_extra_cost(problem, old, new) + 1e-6), s, o

    length, path = problem.critical_path(choice)
    while length > search.slo:
        if not _make_best_move(search, dev, watts, choice, shortening(length, path)):
            return None
        length, path = problem.critical_path(choice)
    return choice


def _make_best_move(search: _Search, dev, watts, choice: list[int], moves) -> bool:
    """Apply the first of the highest-scoring ``(score, stage, option)`` moves; False when there is none."""
    best = max(moves, key=lambda move: move[0], default=None)
    if best is None:
        return False
    search.move(dev, watts, choice, best[1], best[2])
    return True


def _improve(problem: Problem, search: _Search, choice: list[int], budget: "_Budget") -> list[int]:
    """Local search: single-stage moves that lower the objective and keep every constraint, then
    upgrade-one/downgrade-others moves on the critical path, until nothing improves or time is up."""
    if problem.objective is Objective.latency:
        return _improve_latency(problem, search, choice, budget)
    size = sum(len(opts) for opts in problem.options)
    while budget.spend(size):
        changed = _descend(problem, search, choice)
        if not _trade(problem, search, choice, budget) and not changed:
            break
    return choice


def _descend(problem: Problem, search: _Search, choice: list[int], frozen: frozenset[int] = frozenset(),
             sticky: frozenset[int] = frozenset()) -> bool:
    """Move stages to cheaper options that keep every constraint until none is left: on small graphs always
    the largest saving first (steepest descent), on large ones a sweep from the most expensive stage.
    ``frozen`` stages stay; ``sticky`` ones move only for a saving beyond NEUTRAL (so reshaping is not undone
    for crumbs)."""
    dev, watts = search.usage(choice)
    head, tail = search.paths(choice)

    def cheapest_move(s: int) -> tuple[float, int | None]:
        old = problem.options[s][choice[s]]
        current = search.value[s][choice[s]]
        best_o, best_value = None, current * ((1 - NEUTRAL) if s in sticky else 1)
        for o, value in enumerate(search.value[s]):
            if value >= best_value - 1e-12:
                continue
            new = problem.options[s][o]
            if search.through(choice, head, tail, s, new) <= search.slo * (1 + 1e-9) and search.move_fits(dev, watts, old, new):
                best_o, best_value = o, value
        return current - best_value, best_o

    def apply(s: int, o: int) -> None:
        nonlocal head, tail
        search.move(dev, watts, choice, s, o)
        head, tail = search.paths(choice)

    movable = [s for s in range(search.n) if s not in frozen]
    changed = False
    if search.n <= SMALL_GRAPH:
        while True:
            _, s, o = _steepest(movable, cheapest_move)
            if o is None:
                return changed
            apply(s, o)
            changed = True
    for s in sorted(movable, key=lambda s: -search.value[s][choice[s]]):
        _, o = cheapest_move(s)
        if o is not None:
            apply(s, o)
            changed = True
    return changed


def _steepest(movable: list[int], cheapest_move) -> tuple[float, int | None, int | None]:
    best = (0.0, None, None)
    for s in movable:
        saving, o = cheapest_move(s)
        if o is not None and saving > best[0]:
            best = (saving, s, o)
    return best


def _trade(problem: Problem, search: _Search, choice: list[int], budget: "_Budget") -> bool:
    """Speed up one stage on the critical path if the slack it frees lets others get cheaper by more; first
    on the plan as it is, then on the plan with every stage reshaped to its fastest as-cheap option."""
    current = objective_of(problem, choice)
    size = sum(len(opts) for opts in problem.options)
    bases = [(list(choice), frozenset())]
    tightened = _tighten(problem, search, choice, range(search.n))
    if tightened is not None:
        bases.append(tightened)
    for base, moved in bases:
        dev, watts = search.usage(base)
        _, path = problem.critical_path(base)
        trials = [(base, frozenset())]  # the base alone, then each faster option of each critical stage on it
        for s in path:
            old = problem.options[s][base[s]]
            for o, new in enumerate(problem.options[s]):
                if new.latency_slo_s < old.latency_slo_s and search.move_fits(dev, watts, old, new):
                    trials.append((base[:s] + [o] + base[s + 1:], frozenset([s])))
        for trial, frozen in trials:
            if budget.left <= 0:
                return False
            if problem.critical_path(trial)[0] > search.slo * (1 + 1e-9):
                continue
            budget.spend(size)
            trial = list(trial)
            _descend(problem, search, trial, frozen=frozen, sticky=moved)
            if objective_of(problem, trial) < current - 1e-9:
                choice[:] = trial
                return True
    return False


NEUTRAL = 0.01  # an option costing at most 1 % more counts as "as cheap" when it is faster


def _tighten(problem: Problem, search: _Search, choice: list[int], stages):
    """Each of ``stages`` to its fastest option that is about as cheap (another tp, batch or replica count),
    freeing slack that the other stages can spend on cheaper options. None when nothing moves."""
    trial = list(choice)
    dev, watts = search.usage(trial)
    moved = set()
    for s in stages:
        old = problem.options[s][trial[s]]
        ceiling = search.value[s][trial[s]] * (1 + NEUTRAL)
        best_o = None
        for o, new in enumerate(problem.options[s]):
            if (search.value[s][o] <= ceiling and new.latency_slo_s < old.latency_slo_s * 0.99
                    and (best_o is None or new.latency_slo_s < problem.options[s][best_o].latency_slo_s)
                    and search.move_fits(dev, watts, old, new)):
                best_o = o
        if best_o is not None:
            search._add(dev, watts, old, -1)
            search._add(dev, watts, problem.options[s][best_o], 1)
            trial[s] = best_o
            moved.add(s)
    if not moved or problem.critical_path(trial)[0] > search.slo * (1 + 1e-9):
        return None
    return trial, frozenset(moved)


def _improve_latency(problem: Problem, search: _Search, choice: list[int], budget: "_Budget") -> list[int]:
    dev, watts = search.usage(choice)
    size = sum(len(opts) for opts in problem.options)
    while budget.spend(size):
        length, path = problem.critical_path(choice)
        head, tail = search.paths(choice)
        best_move, best_gain = None, 1e-12
        for s in path:
            old = problem.options[s][choice[s]]
            now = search.through(choice, head, tail, s, old)
            for o, new in enumerate(problem.options[s]):
                if o != choice[s] and search.move_fits(dev, watts, old, new):
                    gain = now - search.through(choice, head, tail, s, new)
                    if gain > best_gain:
                        best_move, best_gain = (s, o), gain
        if best_move is None:
            break
        trial = list(choice)
        trial[best_move[0]] = best_move[1]
        if problem.critical_path(trial)[0] >= length - 1e-12:
            break  # another path of equal length: a single move cannot shorten the whole
        s, o = best_move
        search.move(dev, watts, choice, s, o)
    # then the cheapest options that keep the latency reached
    search.slo = problem.critical_path(choice)[0]
    _descend(problem, search, choice)
    return choice
