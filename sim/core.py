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
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tessera.api.power import CappingPolicy
from tessera.planner import cost
from tessera.planner.capping import Controller, Device, Level, Thresholds
from tessera.sim.fleet import MAX_BATCH, EngineClass
from tessera.sim.workload import Request, Step
from tessera.workers.scheduling import Dispatcher, LocalQueue, QueueFactory, ReplicaView, StageCall

EPS = 1e-9


@dataclass(frozen=True)
class Slowdown:
    """How much a cap level slows prefill and decode (docs/results.md: Samsi et al. for the 70 % cap)."""

    prefill: float
    decode: float


@dataclass(frozen=True)
class EngineCap:
    watts: float
    slowdown: Slowdown


@dataclass(frozen=True)
class PowerPolicy:
    """One power group on ``provisioned_watts``, run by the shared POLCA controller (``planner.capping``).

    ``policy`` is the PowerBudget's capping policy (thresholds, cap levels, delays); ``low`` and
    ``high`` are how much its two cap levels slow an engine. ``steer`` sends low-priority calls to
    capped engines while the group is capped, keeping the uncapped ones for urgent work.
    ``capping=False`` only measures the draw.
    """

    provisioned_watts: float
    capping: bool = True
    policy: CappingPolicy = field(default_factory=CappingPolicy)
    low: Slowdown = Slowdown(1.067, 1.0)
    high: Slowdown = Slowdown(1.15, 1.02)
    steer: bool = True

    def slowdown(self, level: Level) -> Slowdown:
        return self.high if level == Level.ALL else self.low


class PowerGroup:
    """The draw of every engine on one budget, the time spent above it, and its controller."""

    def __init__(self, policy: PowerPolicy | None, watts: float):
        self.policy = policy
        self.controller = Controller(Thresholds.from_policy(policy.provisioned_watts, policy.policy)) if policy else None
        self.watts = watts
        self.peak_watts = watts
        self.last_t = 0.0
        self.over_budget_s = 0.0

    @property
    def capping(self) -> bool:
        return self.controller is not None and self.policy.capping

    def changed(self, now: float, delta_watts: float) -> float | None:
        """Account a change of draw; returns when the controller should decide, if that is new."""
        if self.policy is None:
            return None
        if self.watts > self.policy.provisioned_watts:
            self.over_budget_s += now - self.last_t
        self.last_t = now
        self.watts += delta_watts
        self.peak_watts = max(self.peak_watts, self.watts)
        return self.controller.observe(now, self.watts) if self.capping else None

    def cap_for(self, engine: "Engine") -> EngineCap | None:
        if not self.capping:
            return None
        fraction = self.controller.cap_fraction(engine.device())
        if fraction is None:
            return None
        return EngineCap(fraction * engine.cls.spec.tdp_watts, self.policy.slowdown(self.controller.level))


@dataclass
class Job:
    """One LLM call placed on an engine."""

    request: "RequestState"
    tokens: int
    prefill_s: float
    decode_s: float
    est_s: float
    priority: int


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
        self.running_priorities: Counter[int] = Counter()  # of the calls admitted, not yet done
        self.cap: EngineCap | None = None
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
        prefill_slow, decode_slow = (self.cap.slowdown.prefill, self.cap.slowdown.decode) if self.cap else (1.0, 1.0)
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
        self.power = min(power, self.cap.watts) if self.cap else power

    def device(self) -> Device:
        """This engine as the capping controller sees it: the most urgent work it serves now."""
        return Device(self.replica_id, self.cls.spec.tdp_watts, max(self.running_priorities, default=None))

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
        self.running_priorities[job.priority] += 1
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
            self.running_priorities[job.priority] -= 1
            if not self.running_priorities[job.priority]:
                del self.running_priorities[job.priority]
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
        return _Run(self, requests).result()


ARRIVAL, ENGINE, CONTROL = 0, 1, 2  # event kinds


class _Run:
    """The state of one simulation, and one handler per event kind."""

    def __init__(self, sim: Simulator, requests: list[Request]):
        self.sim = sim
        self.sequence = itertools.count()
        self.engines = [
            Engine(i, f"{name}-{i}", sim.classes[name], sim.queue_factory(name), sim.token_budget)
            for i, name in enumerate(sim.fleet)
        ]
        self.by_id = {e.replica_id: e for e in self.engines}
        self.views = [ReplicaView(e.replica_id, e.cls.name, 0.0, sim.weights.get(e.cls.name, 1.0)) for e in self.engines]
        self.costs = step_costs(sim.steps, {n: sim.classes[n] for n in set(sim.fleet)}, sim.reference)
        self.states = [RequestState(r) for r in sorted(requests, key=lambda r: r.arrival_s)]
        self.events: list[tuple[float, int, int, int, int]] = []  # (time, seq, kind, index, version)
        self.group = PowerGroup(sim.power, sum(e.power for e in self.engines))
        n = len(self.states)
        self.allowed_misses = None if sim.stop_below_attainment is None else int((1 - sim.stop_below_attainment) * n)
        self.missed = self.finished = self.processed = 0
        self.stopped = False
        self.handlers = {ARRIVAL: self.on_arrival, ENGINE: self.on_engine, CONTROL: self.on_control}

    def push(self, at: float, kind: int, index: int = 0, version: int = 0) -> None:
        heapq.heappush(self.events, (at, next(self.sequence), kind, index, version))

    def schedule(self, engine: Engine) -> None:
        engine.version += 1
        t = engine.next_time()
        if t is not None:
            self.push(t, ENGINE, engine.index, engine.version)

    def update(self, engine: Engine, now: float, change) -> list[Job]:
        """Run ``change`` on ``engine`` at ``now`` (its caps re-read after), account the draw, reschedule it."""
        engine.advance(now)
        before = engine.power
        done = change()
        engine.cap = self.group.cap_for(engine)
        engine.recompute()
        decision = self.group.changed(now, engine.power - before)
        if decision is not None:
            self.push(decision, CONTROL)
        self.schedule(engine)
        return done

    # --- handlers -------------------------------------------------------------------------------

    def on_arrival(self, now: float, index: int, _version: int) -> None:
        if index + 1 < len(self.states):
            self.push(self.states[index + 1].request.arrival_s, ARRIVAL, index + 1)
        self.start_group(self.states[index], now)

    def on_control(self, now: float, _index: int, _version: int) -> None:
        controller = self.group.controller
        if controller.decide(now, self.group.watts):
            for e in self.engines:
                if self.group.cap_for(e) != e.cap:
                    self.update(e, now, lambda: None)
        decision = controller.observe(now, self.group.watts)
        if decision is not None:
            self.push(decision, CONTROL)

    def on_engine(self, now: float, index: int, version: int) -> None:
        engine = self.engines[index]
        if version != engine.version:
            return
        for job in self.update(engine, now, lambda: engine.step(now, self.sequence)):
            self.sim.dispatcher.on_complete(engine.replica_id, job.est_s)
            state = job.request
            state.pending -= 1
            if state.pending:
                continue
            state.group += 1
            if state.group < len(state.request.groups):
                self.start_group(state, now)
                continue
            state.finish_s = now
            self.finished += 1
            self.missed += now > state.request.deadline_s + EPS
        if self.allowed_misses is not None and self.missed > self.allowed_misses:
            self.stopped = True

    # --- dispatch -------------------------------------------------------------------------------

    def candidates(self, priority: int, est: dict[str, float]) -> list[ReplicaView]:
        """Where a call may go: while the group is capped, low-priority calls go to capped engines that fit them."""
        power = self.sim.power
        if not (self.group.capping and power.steer and self.group.controller.level > Level.NONE
                and priority < power.policy.low_priority_below):
            return self.views
        capped = [v for v, e in zip(self.views, self.engines) if e.cap is not None and v.hardware_class in est]
        return capped or self.views

    def start_group(self, state: RequestState, now: float) -> None:
        sim, req = self.sim, state.request
        name, _, calls = req.groups[state.group]
        cost = self.costs[name]
        after = [self.costs[later].mean_s for later, _, _ in req.groups[state.group + 1:]]  # T̄ of what follows
        state.pending = len(calls)
        for n_in, n_out in calls:
            tokens = n_in + n_out
            est = {
                c: n_in * cost.prefill_per_token[c] + cost.mean_output_tokens * cost.decode_per_token[c]
                for c in cost.prefill_per_token if sim.classes[c].fits(tokens)
            }
            if not est:
                largest = max(sim.classes[c].kv_tokens for c in cost.prefill_per_token)
                raise ValueError(f"request {req.id}: a {name} call needs {tokens} KV tokens, the largest engine "
                                 f"holds {largest}")
            call = StageCall(req.id, name, req.priority, req.arrival_s, req.deadline_s, now, est, after, cost.mean_s)
            engine = self.by_id[sim.dispatcher.choose(call, self.candidates(req.priority, est))]
            cls = engine.cls.name
            call.payload = Job(state, tokens, n_in * cost.prefill_per_token[cls], n_out * cost.decode_per_token[cls],
                               est[cls], req.priority)
            sim.dispatcher.on_assign(engine.replica_id, est[cls])
            engine.queue.push(call, now)
            if engine.prefill_job is None:
                self.update(engine, now, lambda: engine.admit(now))

    # --- the loop -------------------------------------------------------------------------------

    def result(self) -> SimResult:
        if self.states:
            self.push(self.states[0].request.arrival_s, ARRIVAL)
        now = 0.0
        while self.events and not self.stopped:
            now, _, kind, index, version = heapq.heappop(self.events)
            self.processed += 1
            self.handlers[kind](now, index, version)
        for e in self.engines:
            e.advance(now)
        self.group.changed(now, 0.0)
        return self.summary(now)

    def summary(self, end: float) -> SimResult:
        sim, states, engines = self.sim, self.states, self.engines
        latencies = np.array([(s.finish_s - s.request.arrival_s) if s.finish_s is not None else np.inf for s in states])
        met = np.array([s.finish_s is not None and s.finish_s <= s.request.deadline_s + EPS for s in states], dtype=bool)
        makespan = end  # the clock starts at 0 with every engine idle
        energy_j = sum(e.energy_j for e in engines)
        prices = cost.DEFAULT.prices
        usd = (sum(sim.classes[name].usd_per_hour for name in sim.fleet) * makespan / 3600
               + energy_j / 3.6e6 * prices.pue * prices.usd_per_kwh)
        busy: dict[str, list[float]] = {}
        for e in engines:
            busy.setdefault(e.cls.name, []).append(e.busy_s / makespan if makespan else 0.0)
        controller = self.group.controller
        return SimResult(
            latencies_s=latencies, met=met,
            first_waits_s=np.array([(s.first_start_s - s.request.arrival_s) if s.first_start_s is not None else np.inf
                                    for s in states]), priorities=np.array([s.request.priority for s in states]),
            makespan_s=makespan, energy_j=energy_j, usd=usd,
            busy_fraction={k: float(np.mean(v)) for k, v in busy.items()}, peak_watts=self.group.peak_watts,
            over_budget_s=self.group.over_budget_s, cap_events=controller.cap_events if controller else 0,
            stopped_early=self.stopped, events=self.processed, finished=self.finished,
        )
