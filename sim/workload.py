"""Workloads: the HEXGEN Text-to-SQL workflow, arrivals (Poisson, bursty), tenants, JSON traces.

A trace lists every request with its arrival, deadline, priority and the token counts of every
call it will make, so a replay does not depend on the random generator that made it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

TRACE_VERSION = 1


@dataclass(frozen=True)
class Step:
    """One step of a workflow: ``calls`` LLM calls, all at once (``parallel``) or one after another.

    A sequential step is a loop: after each call another follows with ``continue_probability``
    (1: always all ``calls``). ``reference_s`` is the time of one call on the reference class.
    """

    name: str
    calls: int
    input_tokens: float
    output_tokens: float
    reference_s: float
    parallel: bool = False
    continue_probability: float = 1.0


# docs/references.md, HEXGEN-TEXT2SQL (CHESS-style), A100 serving Llama-3.1-70B 4-bit. The four candidates
# run in parallel; the other calls follow one another: 37.5 s per query on an A100.
TEXT2SQL_STEPS = (
    Step("extract-keywords", 1, 667, 45, 1.14),
    Step("information-retriever", 4, 308, 5, 0.225),
    Step("generate-candidate", 4, 11_748, 678, 18.24, parallel=True),
    Step("revise", 4, 5_963, 79, 3.33),
    Step("generate-unit-test", 1, 1_109, 103, 2.54),
    Step("unit-tester", 3, 275, 4, 0.17),
    Step("evaluate", 1, 961, 22, 0.87),
)


def critical_path_s(steps: tuple[Step, ...]) -> float:
    """Mean time of one request alone on the reference class (parallel calls overlap)."""
    return sum(s.reference_s * (1 if s.parallel else s.calls) for s in steps)


@dataclass(frozen=True)
class Tenant:
    name: str
    share: float  # fraction of requests
    priority: int = 0  # higher is more urgent (AgentWorkflow spec.priority)


@dataclass
class Request:
    id: str
    tenant: str
    priority: int
    arrival_s: float
    deadline_s: float
    # per step group: (step name, parallel, [(input tokens, output tokens), ...])
    groups: list[tuple[str, bool, list[tuple[int, int]]]] = field(default_factory=list)


@dataclass(frozen=True)
class Arrivals:
    """``poisson`` at ``rate_rps``, or ``bursty``: on/off periods (exponential, mean ``period_s``) whose
    on-rate is ``burst_factor`` x the mean, which stays ``rate_rps``."""

    rate_rps: float
    kind: str = "poisson"
    burst_factor: float = 4.0
    period_s: float = 300.0

    def times(self, count: int, rng: np.random.Generator) -> np.ndarray:
        if self.rate_rps <= 0:
            raise ValueError(f"rate: must be > 0 requests/s, got {self.rate_rps}")
        if self.kind == "poisson":
            return np.cumsum(rng.exponential(1 / self.rate_rps, count))
        if self.kind != "bursty":
            raise ValueError(f"arrivals: unknown kind {self.kind!r} (poisson or bursty)")
        on_fraction = 1 / self.burst_factor
        on_rate = self.rate_rps * self.burst_factor
        out: list[float] = []
        t = 0.0
        while len(out) < count:
            on_end = t + rng.exponential(self.period_s * on_fraction)
            while len(out) < count:
                t += rng.exponential(1 / on_rate)
                if t > on_end:
                    break
                out.append(t)
            t = on_end + rng.exponential(self.period_s * (1 - on_fraction))
        return np.asarray(out)


def _tokens(mean: float, rng: np.random.Generator, spread: str) -> int:
    """Prompt lengths vary little around their mean (lognormal, sigma 0.2); outputs a lot (gamma, shape 2)."""
    if spread == "input":
        return max(1, round(mean * rng.lognormal(-0.02, 0.2)))
    return max(1, round(rng.gamma(2.0, mean / 2.0)))


def generate(
    count: int,
    arrivals: Arrivals,
    slo_s: float,
    seed: int,
    steps: tuple[Step, ...] = TEXT2SQL_STEPS,
    tenants: tuple[Tenant, ...] = (Tenant("default", 1.0),),
) -> list[Request]:
    """``count`` requests of the workflow ``steps``, each with deadline arrival + ``slo_s``."""
    rng = np.random.default_rng(seed)
    times = arrivals.times(count, rng)
    shares = np.asarray([t.share for t in tenants], dtype=float)
    who = rng.choice(len(tenants), size=count, p=shares / shares.sum())
    requests = []
    for i, (t, k) in enumerate(zip(times, who)):
        tenant = tenants[int(k)]
        groups = []
        for step in steps:
            if step.parallel:
                calls = [(_tokens(step.input_tokens, rng, "input"), _tokens(step.output_tokens, rng, "output"))
                         for _ in range(step.calls)]
                groups.append((step.name, True, calls))
                continue
            for n in range(step.calls):
                if n > 0 and rng.random() >= step.continue_probability:
                    break
                call = (_tokens(step.input_tokens, rng, "input"), _tokens(step.output_tokens, rng, "output"))
                groups.append((step.name, False, [call]))
        requests.append(Request(f"r{i:06d}", tenant.name, tenant.priority, float(t), float(t) + slo_s, groups))
    return requests


def save_trace(requests: list[Request], path: Path, steps: tuple[Step, ...] = TEXT2SQL_STEPS) -> None:
    body = {
        "version": TRACE_VERSION,
        "steps": [asdict(s) for s in steps],
        "requests": [
            {"id": r.id, "tenant": r.tenant, "priority": r.priority, "arrivalS": r.arrival_s, "deadlineS": r.deadline_s,
             "groups": [{"step": name, "parallel": par, "calls": [list(c) for c in calls]} for name, par, calls in r.groups]}
            for r in requests
        ],
    }
    path.write_text(json.dumps(body))


def load_trace(path: Path) -> tuple[list[Request], tuple[Step, ...]]:
    """A trace written by :func:`save_trace`; errors name the field that is wrong."""
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"trace: cannot read {path}: {err}") from None
    if not isinstance(body, dict) or body.get("version") != TRACE_VERSION:
        body = body if isinstance(body, dict) else {}
        raise ValueError(f"trace.version: expected {TRACE_VERSION}, got {body.get('version')!r}")
    try:
        steps = tuple(Step(**s) for s in body["steps"])
        known = {s.name for s in steps}
        requests = [_request(i, r, known) for i, r in enumerate(body["requests"])]
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith("trace."):
            raise
        raise ValueError(f"trace: malformed ({type(err).__name__}: {err})") from None
    return requests, steps


def _request(i: int, r: dict, known: set[str]) -> Request:
    groups = []
    for g in r["groups"]:
        if g["step"] not in known:
            raise ValueError(f"trace.requests[{i}].groups: unknown step {g['step']!r}")
        groups.append((g["step"], bool(g["parallel"]), [(int(a), int(b)) for a, b in g["calls"]]))
    if not groups:
        raise ValueError(f"trace.requests[{i}].groups: a request needs at least one call")
    if r["deadlineS"] < r["arrivalS"]:
        raise ValueError(f"trace.requests[{i}].deadlineS: before its arrivalS")
    return Request(r["id"], r["tenant"], int(r["priority"]), float(r["arrivalS"]), float(r["deadlineS"]), groups)
