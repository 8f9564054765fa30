"""Whole runs: conservation, determinism, traces, power capping, every policy."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.planner.capping import Level
from tessera.sim.core import EngineCap, PowerPolicy, Slowdown, _Run
from tessera.sim.workload import Arrivals, Tenant, generate, load_trace, save_trace
from tessera.workers.scheduling import POLICIES

HEXGEN = ["a100-80gb", "a100-80gb", "a6000", "l40s"]
SLO_S = 5 * 37.52


def workload(rate=0.03, count=300, seed=0, kind="poisson", tenants=(Tenant("default", 1.0),)):
    return generate(count, Arrivals(rate, kind), SLO_S, seed, tenants=tenants)


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("kind", ["poisson", "bursty"])
def test_every_request_finishes(simulator, policy, kind):
    result = simulator(HEXGEN, policy=policy).run(workload(kind=kind))
    assert result.finished == 300
    assert np.isfinite(result.latencies_s).all()
    assert ((result.latencies_s <= SLO_S + 1e-6) == result.met).all()


def test_an_early_stop_counts_the_unfinished_as_missed(simulator):
    """Overloaded far past the SLO, the run stops once 90 % attainment is out of reach."""
    result = simulator(HEXGEN, policy="rr-fcfs", stop_below_attainment=0.9).run(workload(rate=0.2))
    assert result.stopped_early
    assert result.finished < 300
    unfinished = ~np.isfinite(result.latencies_s)
    assert unfinished.sum() == 300 - result.finished
    assert not result.met[unfinished].any()
    assert (~result.met).sum() > 0.1 * 300


def test_same_seed_same_figures_other_seed_other_figures(simulator):
    a = simulator(HEXGEN).run(workload(seed=7))
    b = simulator(HEXGEN).run(workload(seed=7))
    c = simulator(HEXGEN).run(workload(seed=8))
    assert np.array_equal(a.latencies_s, b.latencies_s) and a.energy_j == b.energy_j
    assert not np.array_equal(a.latencies_s, c.latencies_s)


def test_a_saved_trace_replays_identically(simulator, tmp_path):
    requests = workload(count=100)
    save_trace(requests, tmp_path / "t.json")
    replayed, _ = load_trace(tmp_path / "t.json")
    assert np.array_equal(simulator(HEXGEN).run(requests).latencies_s, simulator(HEXGEN).run(replayed).latencies_s)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"version": 2}', "trace.version"),
        ('[1, 2]', "trace.version"),
        ('{"version": 1, "steps": [], "requests": [{"id": "a"}]}', "groups"),
        ('not json', "cannot read"),
    ],
)
def test_a_bad_trace_names_what_is_wrong(tmp_path, body, message):
    path = tmp_path / "bad.json"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        load_trace(path)


@pytest.mark.parametrize("kind", ["poisson", "bursty"])
def test_arrivals_keep_their_mean_rate(kind):
    times = Arrivals(0.5, kind, period_s=20.0).times(100_000, np.random.default_rng(0))
    assert 100_000 / times[-1] == pytest.approx(0.5, rel=0.05)
    gaps = np.diff(times)
    cv = gaps.std() / gaps.mean()
    assert cv == pytest.approx(1.0, abs=0.05) if kind == "poisson" else cv > 1.5


def test_workload_balancing_beats_round_robin_on_a_mixed_fleet(simulator):
    """The mechanism the hexgen scenario measures: round-robin overloads the slow GPUs."""
    requests = workload(rate=0.03, count=400)
    rr = simulator(HEXGEN, policy="rr-fcfs").run(requests)
    wb = simulator(HEXGEN, policy="wb-fcfs").run(workload(rate=0.03, count=400))
    assert wb.met.mean() > rr.met.mean() + 0.2
    assert rr.busy_fraction["a6000"] > rr.busy_fraction["a100-80gb"] + 0.2


def test_capping_keeps_a_grown_fleet_nearer_its_budget(simulator, classes):
    fleet = HEXGEN * 2
    budget = 0.8 * sum(classes[c].spec.tdp_watts for c in fleet)
    tenants = (Tenant("hi", 0.5, 1), Tenant("lo", 0.5, 0))
    runs = {
        capping: simulator(fleet, power=PowerPolicy(budget, capping=capping)).run(
            workload(rate=0.06, count=300, tenants=tenants))
        for capping in (False, True)
    }
    assert runs[False].cap_events == 0 and runs[True].cap_events > 0
    assert runs[True].over_budget_s < 0.5 * runs[False].over_budget_s
    assert runs[True].energy_j < runs[False].energy_j
    assert runs[True].latencies_s.mean() > runs[False].latencies_s.mean()  # caps slow the work down


def test_while_capped_low_priority_calls_go_to_capped_engines_only(simulator, classes):
    """Steering (the polca scenario's): the controller's level and each engine's cap decide the candidates."""
    fleet = ["a100-80gb"] * 4
    run = _Run(simulator(fleet, power=PowerPolicy(1000.0)), [])
    est = {"a100-80gb": 1.0}
    assert run.candidates(0, est) == run.views  # no cap level: every engine
    run.group.controller.level = Level.LOW
    assert run.candidates(0, est) == run.views  # capped, but no engine capped yet: every engine
    run.engines[1].cap = run.engines[3].cap = EngineCap(280.0, Slowdown(1.067, 1.0))
    assert [v.replica_id for v in run.candidates(0, est)] == ["a100-80gb-1", "a100-80gb-3"]
    assert run.candidates(1, est) == run.views  # urgent work may go anywhere
    run.sim.power = PowerPolicy(1000.0, steer=False)
    assert run.candidates(0, est) == run.views


def test_an_engine_serving_urgent_work_is_not_capped_at_t1(simulator):
    run = _Run(simulator(["a100-80gb"] * 2, power=PowerPolicy(1000.0)), [])
    run.group.controller.level = Level.LOW
    busy, idle = run.engines
    busy.running_priorities[1] += 1
    assert run.group.cap_for(busy) is None
    assert run.group.cap_for(idle).watts == 0.7 * idle.cls.spec.tdp_watts
