"""Scenarios (``sim/scenarios/*.json``) and the experiments run on them: per-policy figures,
goodput search, alpha tuning, power oversubscription and TCO."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tessera.api.power import CappingPolicy
from tessera.planner.stats import percentile
from tessera.sim.core import PowerPolicy, SimResult, Simulator
from tessera.sim.fleet import REFERENCE_CLASS, engine_classes
from tessera.sim.workload import TEXT2SQL_STEPS, Arrivals, Request, Step, Tenant, critical_path_s, generate
from tessera.workers.scheduling import make_policy

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
TARGET_ATTAINMENT = 0.9  # goodput: the highest rate at which this share of requests meets the SLO
ALPHA_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
SEARCH_STEPS = 7  # bisection steps of the goodput search
MAX_FLEET = 512  # the tco search gives up beyond this many engines
MAX_DOUBLINGS = 6  # the search raises its upper rate at most this often (x64 the rate grid's top)


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.json"))


@dataclass
class Scenario:
    name: str
    description: str
    model: str
    fleet: list[str]
    weights: dict[str, float]
    alpha: float
    slo_scale: float
    nominal_rate_rps: float
    requests: int
    arrivals: str
    token_budget: int
    tenants: tuple[Tenant, ...]
    rate_grid: list[float]
    policies: list[str]
    fleet_size: int | None = None
    slo_scales: list[float] = field(default_factory=list)
    power: dict | None = None
    growth_percents: list[float] = field(default_factory=list)
    configurations: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str) -> "Scenario":
        path = SCENARIO_DIR / f"{name}.json"
        if not path.is_file():
            raise KeyError(f"scenario: unknown {name!r}, choose one of {', '.join(scenario_names())}")
        body = json.loads(path.read_text())
        return cls(
            name=body["name"], description=body["description"], model=body["model"], fleet=body["fleet"],
            weights=body.get("weights", {}), alpha=body["alpha"], slo_scale=body["sloScale"],
            nominal_rate_rps=body["nominalRateRps"], requests=body["requests"], arrivals=body["arrivals"],
            token_budget=body["tokenBudget"], tenants=tuple(Tenant(**t) for t in body["tenants"]),
            rate_grid=body["rateGrid"], policies=body["policies"], fleet_size=body.get("fleetSize"),
            slo_scales=body.get("sloScales", []), power=body.get("power"),
            growth_percents=body.get("growthPercents", []), configurations=body.get("configurations", {}),
        )

    def sized_fleet(self, size: int | None = None, pattern: list[str] | None = None) -> list[str]:
        """``size`` engines cycling through ``pattern`` (default: the scenario's fleet and size)."""
        pattern = pattern or self.fleet
        size = size or self.fleet_size or len(pattern)
        return [pattern[i % len(pattern)] for i in range(size)]


class Runner:
    """Runs one scenario's simulations: same seed, same requests at every rate (common random numbers)."""

    def __init__(self, scenario: Scenario, seed: int = 0, requests: int | None = None, inventory: Path | None = None,
                 steps: tuple[Step, ...] = TEXT2SQL_STEPS, trace: list[Request] | None = None):
        self.scenario = scenario
        self.seed = seed
        self.count = len(trace) if trace is not None else requests or scenario.requests
        self.steps = steps
        self.trace = trace
        names = set(scenario.fleet) | {
            c for config in scenario.configurations.values() for c in [*config["filler"], *filter(None, [config.get("anchor")])]
        }
        self.classes = engine_classes(sorted(names), scenario.model, inventory)
        self.reference = self.classes[REFERENCE_CLASS]
        self.mean_workflow_s = critical_path_s(steps)
        self.runs = 0

    def requests(self, rate: float, slo_scale: float | None = None) -> list[Request]:
        if self.trace is not None:
            return self.trace
        slo_s = (slo_scale or self.scenario.slo_scale) * self.mean_workflow_s
        arrivals = Arrivals(rate, self.scenario.arrivals)
        return generate(self.count, arrivals, slo_s, self.seed, self.steps, self.scenario.tenants)

    def simulate(self, policy: str, rate: float, fleet: list[str] | None = None, slo_scale: float | None = None,
                 power: PowerPolicy | None = None, stop_below: float | None = None, alpha: float | None = None) -> SimResult:
        dispatcher, queues = make_policy(policy, alpha=self.scenario.alpha if alpha is None else alpha)
        sim = Simulator(
            self.classes, self.reference, fleet or self.scenario.sized_fleet(), self.steps, dispatcher, queues,
            weights=self.scenario.weights, token_budget=self.scenario.token_budget, power=power,
            stop_below_attainment=stop_below,
        )
        self.runs += 1
        return sim.run(self.requests(rate, slo_scale))

    def goodput(self, policy: str, fleet: list[str] | None = None, power: PowerPolicy | None = None,
                power_for_rate: Callable[[float], PowerPolicy | None] | None = None) -> float:
        """Highest arrival rate (requests/s) with SLO attainment >= 90 %, by bisection over the rate grid's span."""
        def ok(rate: float) -> bool:
            p = power_for_rate(rate) if power_for_rate else power
            return self.simulate(policy, rate, fleet, power=p, stop_below=TARGET_ATTAINMENT).met.mean() >= TARGET_ATTAINMENT

        low, high = min(self.scenario.rate_grid), max(self.scenario.rate_grid)
        if not ok(low):
            return 0.0
        for _ in range(MAX_DOUBLINGS):
            if not ok(high):
                break
            low, high = high, high * 2
        else:
            return low  # too few requests to load the fleet at any rate: report the highest rate tried
        for _ in range(SEARCH_STEPS):
            mid = (low + high) / 2
            low, high = (mid, high) if ok(mid) else (low, mid)
        return low


def figures(result: SimResult, policy: str, goodput: float | None, requests: int) -> dict:
    """The per-policy JSON of the issue (latencies at the rate simulated)."""
    return {
        "policy": policy,
        "sloAttainment": round(float(result.met.mean()), 4),
        "throughputRps": None if goodput is None else round(goodput, 5),
        "latencyP50S": _percentile(result.latencies_s, 50),
        "latencyP95S": _percentile(result.latencies_s, 95),
        "deadlineMisses": int((~result.met).sum()),
        "energyKWh": round(result.energy_j / 3.6e6, 3),
        "usdPer1kRequests": round(result.usd / requests * 1000, 3),
    }


def _percentile(latencies_s: np.ndarray, q: float) -> float | None:
    """A latency percentile; None when it falls among requests a stopped run never finished."""
    value = percentile(latencies_s, q, method="higher")
    return None if value is None else round(value, 2)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", leave=False)


def run_hexgen(runner: Runner, policies: list[str], curves: bool = False) -> dict:
    """Per-policy figures at the nominal rate, goodput, the comparison with rr-fcfs, and (``curves``)
    SLO attainment vs rate and P95 latency vs SLO scale."""
    sc = runner.scenario
    results = []
    curve_rates, curve_scales = {}, {}
    with _progress(len(policies), f"{sc.name}: policies") as bar:
        for policy in policies:
            nominal = runner.simulate(policy, sc.nominal_rate_rps)
            results.append(figures(nominal, policy, runner.goodput(policy), runner.count))
            if curves:
                curve_rates[policy] = [float(runner.simulate(policy, r).met.mean()) for r in sc.rate_grid]
                curve_scales[policy] = [
                    float(np.percentile(runner.simulate(policy, sc.nominal_rate_rps, slo_scale=s).latencies_s, 95))
                    for s in sc.slo_scales
                ]
            bar.update()
    out = _header(runner) | {"results": results, "comparison": compare(results)}
    if curves:
        out["curves"] = {"rateGrid": sc.rate_grid, "sloAttainmentByRate": curve_rates,
                         "sloScales": sc.slo_scales, "latencyP95ByScale": curve_scales}
    return out


def compare(results: list[dict], baseline: str = "rr-fcfs") -> dict:
    """Each policy's goodput and P95 latency against the baseline's, measured in the same run."""
    by = {r["policy"]: r for r in results}
    if baseline not in by:
        return {}
    base = by[baseline]
    out = {"baseline": baseline}
    for name, r in by.items():
        if name == baseline:
            continue
        out[name] = {
            "throughputRatio": _ratio(r["throughputRps"], base["throughputRps"]),
            "latencyP95Ratio": _ratio(base["latencyP95S"], r["latencyP95S"]),  # > 1: lower than the baseline
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _header(runner: Runner) -> dict:
    sc = runner.scenario
    return {
        "scenario": sc.name, "seed": runner.seed, "requests": runner.count,
        "nominalRateRps": sc.nominal_rate_rps, "sloS": round(sc.slo_scale * runner.mean_workflow_s, 2),
        "alpha": sc.alpha,
    }


def tune_alpha(runner: Runner, policy: str = "wb-urgency", alphas: Iterable[float] = ALPHA_GRID) -> dict:
    """HEXGEN's grid search: the alpha with the best mean SLO attainment over the scenario's rate grid."""
    sc = runner.scenario
    alphas = list(alphas)
    scores = []
    with _progress(len(alphas), f"{sc.name}: alpha") as bar:
        for a in alphas:
            scores.append(float(np.mean([runner.simulate(policy, r, alpha=a).met.mean() for r in sc.rate_grid])))
            bar.update()
    best = alphas[int(np.argmax(scores))]
    return {"scenario": sc.name, "policy": policy, "alphas": alphas, "meanSloAttainment": [round(s, 4) for s in scores],
            "bestAlpha": best}


def power_policy(scenario: Scenario, fleet_watts: float, capping: bool) -> PowerPolicy:
    """The scenario's power group; ``capping`` (the PowerBudget's fields, camelCase) overrides the API defaults."""
    spec = scenario.power or {}
    watts = spec.get("provisionedWatts", "nameplate")
    return PowerPolicy(provisioned_watts=fleet_watts if watts == "nameplate" else float(watts), capping=capping,
                       policy=CappingPolicy.model_validate(spec.get("capping", {})), steer=spec.get("steer", True))


def run_polca(runner: Runner, policy: str) -> dict:
    """Grow the fleet (and its load) by each growth percent under the base fleet's power budget,
    with and without capping; report the largest fleet that stays within the budget."""
    sc = runner.scenario
    base = sc.sized_fleet()
    budget = sum(runner.classes[c].spec.tdp_watts for c in base)
    tolerance = (sc.power or {}).get("overBudgetTolerance", 0.001)
    rows = []
    with _progress(len(sc.growth_percents), f"{sc.name}: growth") as bar:
        for pct in sc.growth_percents:
            size = round(len(base) * (1 + pct / 100))
            fleet = sc.sized_fleet(size)
            rate = sc.nominal_rate_rps * size / len(base)
            row = {"extraServersPct": pct, "engines": size, "rateRps": round(rate, 4)}
            for capping in (False, True):
                r = runner.simulate(policy, rate, fleet, power=power_policy(sc, budget, capping))
                key = "capped" if capping else "uncapped"
                row[key] = {
                    "sloAttainment": round(float(r.met.mean()), 4),
                    "sloAttainmentHighPriority": round(float(r.met[r.priorities > 0].mean()), 4),
                    "overBudgetFraction": round(r.over_budget_s / r.makespan_s, 5),
                    "peakWatts": round(r.peak_watts), "capEvents": r.cap_events,
                    "withinBudget": r.over_budget_s / r.makespan_s <= tolerance, "result": r,
                }
            row["sloAttainmentLossPct"] = round(100 * (row["uncapped"]["sloAttainment"] - row["capped"]["sloAttainment"]), 2)
            rows.append(row)
            bar.update()
    out = _header(runner) | {"budgetWatts": budget, "overBudgetTolerance": tolerance, "results": []}
    for capping in (True, False):
        key = "capped" if capping else "uncapped"
        fits = [row for row in rows if row[key]["withinBudget"]]
        if not fits:
            out["results"].append({"policy": policy, "capping": capping, "extraServersPct": None})
            continue
        best = max(fits, key=lambda row: row["extraServersPct"])
        size = best["engines"]
        fleet = sc.sized_fleet(size)
        goodput = runner.goodput(policy, fleet, power_for_rate=lambda rate: power_policy(sc, budget, capping))
        fig = figures(best[key]["result"], policy, goodput, runner.count)
        out["results"].append(fig | {
            "capping": capping, "extraServersPct": best["extraServersPct"],
            "sloAttainmentLossPct": best["sloAttainmentLossPct"] if capping else 0.0,
            "capEvents": best[key]["capEvents"], "peakWatts": best[key]["peakWatts"],
        })
    for row in rows:
        for key in ("capped", "uncapped"):
            row[key].pop("result")
    out["growth"] = rows
    return out


def run_tco(runner: Runner, policy: str) -> dict:
    """The cheapest fleet of each configuration that meets the SLO for >= 90 % of requests at the
    nominal rate, and what it costs per 1,000 requests.

    A configuration is ``{"filler": [classes...]}`` (engines cycling through that list) or, for a
    mix with the newest class, ``{"anchor": CLASS, "filler": [...]}``: for each anchor count below
    the anchor's own homogeneous minimum, the fewest filler engines that make up the rest; the
    cheapest of those fleets (in $/h) is the configuration's answer.
    """
    sc = runner.scenario
    rate = sc.nominal_rate_rps

    def meets(fleet: list[str]) -> bool:
        if not fleet:
            return False
        return runner.simulate(policy, rate, fleet, stop_below=TARGET_ATTAINMENT).met.mean() >= TARGET_ATTAINMENT

    def fewest(prefix: list[str], filler: list[str]) -> list[str]:
        """``prefix`` plus the fewest engines cycling through ``filler`` that meet the SLO."""
        if meets(prefix):
            return prefix
        low, high = 0, len(filler)
        while not meets(prefix + sc.sized_fleet(high, filler)):
            if high > MAX_FLEET:
                raise ValueError(f"{label}: no fleet of up to {MAX_FLEET} engines meets the SLO at {rate} requests/s")
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if meets(prefix + sc.sized_fleet(mid, filler)) else (mid, high)
        return prefix + sc.sized_fleet(high, filler)

    def usd_per_hour(fleet: list[str]) -> float:
        return sum(runner.classes[c].usd_per_hour for c in fleet)

    homogeneous: dict[str, int] = {}
    results = []
    with _progress(len(sc.configurations), f"{sc.name}: configurations") as bar:
        for label, config in sc.configurations.items():
            anchor, filler = config.get("anchor"), config["filler"]
            if anchor is None:
                fleet = fewest([], filler)
            else:
                if anchor not in homogeneous:
                    homogeneous[anchor] = len(fewest([], [anchor]))
                options = [fewest([anchor] * n, filler) for n in range(1, homogeneous[anchor])]
                fleet = min(options, key=usd_per_hour) if options else [anchor] * homogeneous[anchor]
            if len(set(fleet)) == 1:
                homogeneous.setdefault(fleet[0], len(fleet))
            nominal = runner.simulate(policy, rate, fleet)
            fig = figures(nominal, policy, runner.goodput(policy, fleet), runner.count)
            devices: dict[str, int] = {}
            for c in fleet:
                devices[c] = devices.get(c, 0) + 1
            results.append({"configuration": label, "devices": devices, "usdPerHour": round(usd_per_hour(fleet), 2)} | fig)
            bar.update()
    newest = results[0]
    for r in results:
        r["usdPer1kRequestsVsNewest"] = round(r["usdPer1kRequests"] / newest["usdPer1kRequests"], 3)
    return _header(runner) | {"newest": newest["configuration"], "results": results}

def replay(runner: Runner, policies: list[str]) -> dict:
    """Each policy on the runner's trace as it is (its own arrivals and deadlines; no goodput search)."""
    results = [figures(runner.simulate(p, runner.scenario.nominal_rate_rps), p, None, len(runner.trace))
               for p in policies]
    return _header(runner) | {"trace": True, "results": results, "comparison": compare(results)}
