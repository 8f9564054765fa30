"""The discrete-event simulator: engines with Sarathi-style chunked prefill, a power group with
POLCA capping, and the real scheduling policies of ``tessera.workers.scheduling``.

Events (a heap, no per-token events): request arrivals, an engine's next phase change (a prefill
or a decode finishing), and power-controller decisions. Between events every engine runs at
constant rates, so progress is integrated in closed form ("fluid" iterations):

- an iteration decodes one token of every running call and prefills ``token_budget − n`` tokens of
  the one call in prefill (chunked prefill, so a long prompt never stalls the decodes);
- work is counted in seconds the call would take alone on an idle engine of its class, so a
  decoder advances at ``decode_step(1) / iteration`` and the prefill at ``chunk time / iteration``;
- the KV cache admits a call only while its prompt + output fit; the replica's local queue (the
  policy) chooses which waiting call starts its prefill next.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from tessera.planner import cost
from tessera.sim.fleet import MAX_BATCH, EngineClass
from tessera.sim.workload import Request, Step
from tessera.workers.scheduling import Dispatcher, LocalQueue, QueueFactory, ReplicaView, StageCall

EPS = 1e-9


@dataclass(frozen=True)
class CapLevel:
    """A power cap: at most ``tdp_fraction`` x TDP, prefill and decode slowed by these factors."""

    tdp_fraction: float
    prefill_slowdown: float
    decode_slowdown: float


@dataclass(frozen=True)
class PowerPolicy:
    """POLCA two-threshold capping of one power group (fractions of ``provisioned_watts``).

    Above T1 the engines serving no call of priority >= ``low_priority_below`` are capped to
    ``low``; above T2 every engine is capped to ``high``; caps lift once the draw falls ``margin``
    below the threshold that set them, but no sooner than ``hold_s`` after they were set (without the
    hold, a cap that works lifts itself at once and the group oscillates). A decision acts ``delay_s``
    after the draw crosses a line. ``capping=False`` only measures the draw. POLCA publishes none of
    these figures; ours are in the scenario files and docs/results.md.
    """

    provisioned_watts: float
    capping: bool = True
    t1: float = 0.85
    t2: float = 0.95
    margin: float = 0.05
    low: CapLevel = CapLevel(0.70, 1.067, 1.0)
    high: CapLevel = CapLevel(0.60, 1.15, 1.02)
    low_priority_below: int = 1
    delay_s: float = 1.0
    hold_s: float = 10.0


class PowerGroup:
    """The draw of every engine on one budget, the time spent above it, and the capping controller."""

    NONE, LOW, ALL = 0, 1, 2

    def __init__(self, policy: PowerPolicy | None, watts: float):
        self.policy = policy
        self.watts = watts
        self.peak_watts = watts
        self.last_t = 0.0
        self.over_budget_s = 0.0
        self.level = self.NONE
        self.level_since = -math.inf
        self.decision_pending = False
        self.cap_events = 0

    def changed(self, now: float, delta_watts: float) -> float | None:
        """Account a change of draw; returns when the controller should decide, if it should and has not been asked."""
        if self.policy is None:
            return None
        if self.watts > self.policy.provisioned_watts:
            self.over_budget_s += now - self.last_t
        self.last_t = now
        self.watts += delta_watts
        self.peak_watts = max(self.peak_watts, self.watts)
        return self.next_decision(now)

    def next_decision(self, now: float) -> float | None:
        if self.policy is None or not self.policy.capping or self.decision_pending:
            return None
        wanted = self._wanted()
        if wanted == self.level:
            return None
        self.decision_pending = True
        at = now + self.policy.delay_s
        return at if wanted > self.level else max(at, self.level_since + self.policy.hold_s)

    def _wanted(self) -> int:
        p, budget = self.policy, self.policy.provisioned_watts
        if self.watts > p.t2 * budget or (self.level == self.ALL and self.watts > (p.t2 - p.margin) * budget):
            return self.ALL
        if self.watts > p.t1 * budget or (self.level >= self.LOW and self.watts > (p.t1 - p.margin) * budget):
            return self.LOW
        return self.NONE

    def decide(self, now: float) -> bool:
        """The controller acts: returns whether the cap level changed."""
        self.decision_pending = False
        wanted = self._wanted()
        if wanted == self.level or (wanted < self.level and now < self.level_since + self.policy.hold_s):
            return False
        self.cap_events += wanted > self.level
        self.level, self.level_since = wanted, now
        return True

    def cap_for(self, engine: "Engine") -> CapLevel | None:
        if self.level == self.ALL:
            return self.policy.high
        if self.level == self.LOW and engine.high_running == 0:
            return self.policy.low
        return None


@dataclass
class Job:
    """One LLM call placed on an engine."""

    request: "RequestState"
    tokens: int
    prefill_s: float
    decode_s: float
    est_s: float
    high_priority: bool


class Engine:
    """One model replica on one device: a prefill slot, a decode batch, a KV cache, a local queue."""

    def __init__(self, index: int, replica_id: str, cls: EngineClass, queue: LocalQueue, token_budget: int):
        self.index = index
        self.replica_id = replica_id
        self.cls = cls
        self.queue = queue
        self.token_budget = token_budget
        self.prefill_job: Job | None = None
        self.prefill_left = 0.0
        self.decoders: list[tuple[float, int, Job]] = []
        self.v_decode = 0.0
        self.kv_used = 0
        self.high_running = 0
        self.cap: CapLevel | None = None
        self.last_t = 0.0
        self.rate_prefill = 0.0
        self.rate_decode = 0.0
        self.power = cls.spec.idle_watts
        self.energy_j = 0.0
        self.busy_s = 0.0
        self.version = 0

    def advance(self, now: float) -> None:
        dt = now - self.last_t
        if dt > 0:
            self.v_decode += self.rate_decode * dt
            self.prefill_left -= self.rate_prefill * dt
            self.energy_j += self.power * dt
            if self.prefill_job is not None or self.decoders:
                self.busy_s += dt
            self.last_t = now

    def recompute(self) -> None:
        n = len(self.decoders)
        prefill_slow, decode_slow = (self.cap.prefill_slowdown, self.cap.decode_slowdown) if self.cap else (1.0, 1.0)
        decode_t = self.cls.decode_step_s[n - 1] * decode_slow if n else 0.0
        chunk_alone_t = (self.token_budget - n) * self.cls.prefill_s_per_token if self.prefill_job else 0.0
        prefill_t = chunk_alone_t * prefill_slow
        iteration = decode_t + prefill_t
        if iteration <= 0:
            self.rate_prefill = self.rate_decode = 0.0
            self.power = self.cls.spec.idle_watts
            return
        self.rate_decode = self.cls.decode_step_s[0] / iteration if n else 0.0
        self.rate_prefill = chunk_alone_t / iteration
        decode_w = self.cls.decode_watts[n - 1] if n else 0.0
        power = (prefill_t * self.cls.prefill_watts + decode_t * decode_w) / iteration
        self.power = min(power, self.cap.tdp_fraction * self.cls.spec.tdp_watts) if self.cap else power

    def next_time(self) -> float | None:
        times = []
        if self.prefill_job is not None and self.rate_prefill > 0:
            times.append(self.last_t + max(0.0, self.prefill_left) / self.rate_prefill)
        if self.decoders and self.rate_decode > 0:
            times.append(self.last_t + max(0.0, self.decoders[0][0] - self.v_decode) / self.rate_decode)
        return min(times) if times else None

    def admit(self, now: float) -> None:
        """Start the prefill of the call the local queue ranks first, if its KV cache fits."""
        if self.prefill_job is not None or len(self.decoders) >= MAX_BATCH:
            return
        call = self.queue.peek(now, self.cls.name)
        if call is None or self.kv_used + call.payload.tokens > self.cls.kv_tokens:
            return
        self.queue.pop(now, self.cls.name)
        job: Job = call.payload
        self.prefill_job = job
        self.prefill_left = job.prefill_s
        self.kv_used += job.tokens
        self.high_running += job.high_priority
        if job.request.first_start_s is None:
            job.request.first_start_s = now

    def step(self, now: float, sequence: itertools.count) -> list[Job]:
        """Finish what is due at ``now``; returns the calls that completed."""
        done = []
        if self.prefill_job is not None and self.prefill_left <= EPS * (1 + self.prefill_job.prefill_s):
            job = self.prefill_job
            self.prefill_job = None
            heapq.heappush(self.decoders, (self.v_decode + job.decode_s, next(sequence), job))
        while self.decoders and self.decoders[0][0] <= self.v_decode + EPS * (1 + self.v_decode):
            job = heapq.heappop(self.decoders)[2]
            self.kv_used -= job.tokens
            self.high_running -= job.high_priority
            done.append(job)
        self.admit(now)
        return done


@dataclass
class RequestState:
    request: Request
    group: int = 0
    pending: int = 0
    first_start_s: float | None = None  # when its first call began its prefill
    finish_s: float | None = None


@dataclass
class StepCosts:
    """Per step and class: alone seconds per prompt token and per output token, and the mean estimate."""

    prefill_per_token: dict[str, float]
    decode_per_token: dict[str, float]
    mean_s: float  # T̄(step): mean over the fleet's classes (HEXGEN)
    mean_output_tokens: float  # the scheduler knows a prompt's length, not its answer's


def step_costs(steps: tuple[Step, ...], classes: dict[str, EngineClass], reference: EngineClass) -> dict[str, StepCosts]:
    """REFERENCE step time x class factor, split into prefill and decode by the class's per-token costs."""
    out = {}
    for st in steps:
        pre, dec, totals = {}, {}, []
        for name, ec in classes.items():
            total = st.reference_s * ec.step_factor(reference, st.input_tokens, st.output_tokens)
            raw_p, raw_d = ec.raw_call_s(st.input_tokens, st.output_tokens)
            pre[name] = total * raw_p / (raw_p + raw_d) / st.input_tokens
            dec[name] = total * raw_d / (raw_p + raw_d) / st.output_tokens
            totals.append(total)
        out[st.name] = StepCosts(pre, dec, float(np.mean(totals)), st.output_tokens)
    return out


@dataclass
class SimResult:
    latencies_s: np.ndarray  # per request; inf where unfinished
    first_waits_s: np.ndarray  # per request, arrival to its first call's prefill; inf where never started
    met: np.ndarray  # bool per request
    priorities: np.ndarray
    makespan_s: float
    energy_j: float
    usd: float
    busy_fraction: dict[str, float]
    peak_watts: float
    over_budget_s: float
    cap_events: int
    stopped_early: bool
    events: int = 0
    finished: int = 0


@dataclass
class Simulator:
    """One run: ``fleet`` lists the class of each engine; ``power`` is optional."""

    classes: dict[str, EngineClass]
    reference: EngineClass
    fleet: list[str]
    steps: tuple[Step, ...]
    dispatcher: Dispatcher
    queue_factory: QueueFactory
    weights: dict[str, float] = field(default_factory=dict)
    token_budget: int = 512
    power: PowerPolicy | None = None
    stop_below_attainment: float | None = None  # stop once this attainment can no longer be reached

    def run(self, requests: list[Request]) -> SimResult:
        sequence = itertools.count()
        engines = [
            Engine(i, f"{name}-{i}", self.classes[name], self.queue_factory(name), self.token_budget)
            for i, name in enumerate(self.fleet)
        ]
        by_id = {e.replica_id: e for e in engines}
        views = [ReplicaView(e.replica_id, e.cls.name, 0.0, self.weights.get(e.cls.name, 1.0)) for e in engines]
        costs = step_costs(self.steps, {n: self.classes[n] for n in set(self.fleet)}, self.reference)
        states = [RequestState(r) for r in sorted(requests, key=lambda r: r.arrival_s)]
        events: list[tuple[float, int, int, int, int]] = []  # (time, seq, kind, index, version)
        ARRIVAL, ENGINE, CONTROL = 0, 1, 2

        def schedule(engine: Engine) -> None:
            engine.version += 1
            t = engine.next_time()
            if t is not None:
                heapq.heappush(events, (t, next(sequence), ENGINE, engine.index, engine.version))

        group = PowerGroup(self.power, sum(e.power for e in engines))

        def power_changed(now: float, before: float, after: float) -> None:
            decision = group.changed(now, after - before)
            if decision is not None:
                heapq.heappush(events, (decision, next(sequence), CONTROL, 0, 0))

        def apply_caps(now: float) -> None:
            for e in engines:
                cap = group.cap_for(e)
                if cap is not e.cap:
                    e.advance(now)
                    before = e.power
                    e.cap = cap
                    e.recompute()
                    power_changed(now, before, e.power)
                    schedule(e)

        def start_group(state: RequestState, now: float) -> None:
            req = state.request
            name, _, calls = req.groups[state.group]
            cost = costs[name]
            after = [costs[later].mean_s for later, _, _ in req.groups[state.group + 1:]]  # T̄ of what follows
            state.pending = len(calls)
            for n_in, n_out in calls:
                tokens = n_in + n_out
                est = {
                    c: n_in * cost.prefill_per_token[c] + cost.mean_output_tokens * cost.decode_per_token[c]
                    for c in cost.prefill_per_token if self.classes[c].fits(tokens)
                }
                if not est:
                    largest = max(self.classes[c].kv_tokens for c in cost.prefill_per_token)
                    raise ValueError(f"request {req.id}: a {name} call needs {tokens} KV tokens, the largest engine "
                                     f"holds {largest}")
                call = StageCall(req.id, name, req.priority, req.arrival_s, req.deadline_s, now, est, after, cost.mean_s)
                engine = by_id[self.dispatcher.choose(call, views)]
                cls = engine.cls.name
                call.payload = Job(
                    state, tokens, n_in * cost.prefill_per_token[cls], n_out * cost.decode_per_token[cls], est[cls],
                    req.priority >= (self.power.low_priority_below if self.power else 1),
                )
                self.dispatcher.on_assign(engine.replica_id, est[cls])
                engine.queue.push(call, now)
                if engine.prefill_job is None:
                    engine.advance(now)
                    before = engine.power
                    engine.admit(now)
                    engine.recompute()
                    power_changed(now, before, engine.power)
                    schedule(engine)

        n = len(states)
        allowed_misses = None if self.stop_below_attainment is None else int((1 - self.stop_below_attainment) * n)
        missed = finished = processed = 0
        stopped = False
        if states:
            heapq.heappush(events, (states[0].request.arrival_s, next(sequence), ARRIVAL, 0, 0))
        now = 0.0
        while events:
            now, _, kind, index, version = heapq.heappop(events)
            processed += 1
            if kind == ARRIVAL:
                if index + 1 < n:
                    heapq.heappush(events, (states[index + 1].request.arrival_s, next(sequence), ARRIVAL, index + 1, 0))
                start_group(states[index], now)
            elif kind == CONTROL:
                if group.decide(now):
                    apply_caps(now)
                decision = group.next_decision(now)
                if decision is not None:
                    heapq.heappush(events, (decision, next(sequence), CONTROL, 0, 0))
            else:
                engine = engines[index]
                if version != engine.version:
                    continue
                engine.advance(now)
                before = engine.power
                done = engine.step(now, sequence)
                engine.recompute()
                power_changed(now, before, engine.power)
                schedule(engine)
                for job in done:
                    self.dispatcher.on_complete(engine.replica_id, job.est_s)
                    state = job.request
                    state.pending -= 1
                    if state.pending:
                        continue
                    state.group += 1
                    if state.group < len(state.request.groups):
                        start_group(state, now)
                        continue
                    state.finish_s = now
                    finished += 1
                    missed += now > state.request.deadline_s + EPS
                if allowed_misses is not None and missed > allowed_misses:
                    stopped = True
                    break
        end = now
        for e in engines:
            e.advance(end)
        group.changed(end, 0.0)
        latencies = np.array([(s.finish_s - s.request.arrival_s) if s.finish_s is not None else np.inf for s in states])
        met = np.array([s.finish_s is not None and s.finish_s <= s.request.deadline_s + EPS for s in states], dtype=bool)
        makespan = end  # the clock starts at 0 with every engine idle
        energy_j = sum(e.energy_j for e in engines)
        prices = cost.DEFAULT.prices
        usd = (sum(self.classes[name].usd_per_hour for name in self.fleet) * makespan / 3600
               + energy_j / 3.6e6 * prices.pue * prices.usd_per_kwh)
        busy: dict[str, list[float]] = {}
        for e in engines:
            busy.setdefault(e.cls.name, []).append(e.busy_s / makespan if makespan else 0.0)
        return SimResult(
            latencies_s=latencies, met=met,
            first_waits_s=np.array([(s.first_start_s - s.request.arrival_s) if s.first_start_s is not None else np.inf
                                    for s in states]), priorities=np.array([s.request.priority for s in states]),
            makespan_s=makespan, energy_j=energy_j, usd=usd,
            busy_fraction={k: float(np.mean(v)) for k, v in busy.items()}, peak_watts=group.peak_watts,
            over_budget_s=group.over_budget_s, cap_events=group.cap_events, stopped_early=stopped, events=processed,
            finished=finished,
        )
