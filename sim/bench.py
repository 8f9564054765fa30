"""``tessera bench sim``: how fast the simulator runs 10,000 requests (goal: under 30 s here).

Baseline in the same run: the plain rr-fcfs policy; the figure of merit is wb-urgency's wall time
(its dispatcher scores every engine for every call) against the 30 s budget.
"""

from __future__ import annotations

import argparse
import time

from tessera.api.common import positive_int

BUDGET_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=positive_int, default=10_000, help="requests to simulate (default 10000)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    from tessera.sim.experiments import Runner, Scenario

    scenario = Scenario.load("hexgen")
    # the requests are made once, outside the timing, and replayed as a trace
    requests = Runner(scenario, seed=args.seed, requests=args.requests).requests(scenario.nominal_rate_rps)
    runner = Runner(scenario, seed=args.seed, trace=requests)
    out = {"benchmark": "sim", "requests": args.requests, "budgetS": BUDGET_S, "baseline": "rr-fcfs", "runs": {}}
    for policy in ("rr-fcfs", "wb-urgency"):
        start = time.perf_counter()
        result = runner.simulate(policy, scenario.nominal_rate_rps)
        wall = time.perf_counter() - start
        out["runs"][policy] = {"wallS": round(wall, 2), "events": result.events,
                               "eventsPerS": round(result.events / wall), "simulatedHours": round(result.makespan_s / 3600, 1)}
    wall = out["runs"]["wb-urgency"]["wallS"]
    out["withinBudget"] = wall < BUDGET_S
    out["vsBaseline"] = round(wall / out["runs"]["rr-fcfs"]["wallS"], 3)
    return out
