"""The placement problem: every stage's candidate placements, costed, and the graph that joins them.

A candidate (StageOption) fixes a stage's hardware class, tensor-parallel degree, batch slots per
replica, replica count and, for speculative decoding, the class of the draft. Candidates that
another candidate on the same classes beats on latency, dollars, watts and devices at once are
dropped, which keeps both solvers small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx

from tessera.api.hardware import HardwareClassSpec
from tessera.api.model_profile import ModelProfileSpec
from tessera.api.workflow import AgentWorkflowSpec, Objective, Stage, StageKind
from tessera.planner import cost
from tessera.planner.inventory import Inventory, PowerGroup
from tessera.planner.queueing import erlang_c_by_servers, wait_quantile

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)  # batch slots per LLM replica
COARSE_BATCH_SIZES = (1, 4, 16, 64)  # for graphs of more than LARGE_GRAPH stages, to keep planning within a second
LARGE_GRAPH = 64
CONCURRENCY = (1, 8, 64)  # calls in flight per replica of a stage with a measured latency (mostly waiting on I/O)
MAX_UTILIZATION = 0.95  # the fewest replicas considered keep utilization below this
EXTRA_REPLICAS = 3  # and up to this many more replicas are considered, to cut queueing


@dataclass(frozen=True)
class StageOption:
    hardware_class: str
    replicas: int
    tensor_parallel: int
    batch_size: int
    service_s: float  # one call at the planned batch
    prefill_s: float
    decode_s: float
    latency_p50_s: float  # the stage's share of a request: waits, fan-out and iterations included
    latency_slo_s: float  # the same at the SLO percentile
    utilization: float
    devices: dict[str, int]  # devices held, per class (the draft may hold some of another class)
    watts_by_class: dict[str, float]  # expected draw per class
    peak_watts_by_class: dict[str, float]  # all devices at TDP (prefill bursts)
    usd_per_hour: float
    draft_class: str | None = None
    watts: float = 0.0  # expected draw, all classes together

@dataclass
class Problem:
    names: list[str]  # stages in topological order
    stages: list[Stage]
    options: list[list[StageOption]]
    preds: list[list[int]]
    succs: list[list[int]]
    classes: dict[str, HardwareClassSpec]
    capacity: dict[str, int]
    groups: tuple[PowerGroup, ...]
    slo_s: float
    percentile: float
    requests_per_second: float
    objective: Objective
    params: cost.CostParameters
    unplaceable: dict[str, str] = field(default_factory=dict)  # stage -> why no candidate exists

    _transfers: dict[tuple[int, str, str], float] = field(default_factory=dict, repr=False)

    def transfer_s(self, u: int, sender: str, receiver: str) -> float:
        """Moving stage u's output to a dependent on another class (nothing when both share a class)."""
        if sender == receiver:
            return 0.0
        key = (u, sender, receiver)
        seconds = self._transfers.get(key)
        if seconds is None:
            stage = self.stages[u]
            payload = stage.payload_k_b * 1024 * stage.fan_out
            seconds = cost.transfer_seconds(payload, self.classes[sender], self.classes[receiver], self.params)
            self._transfers[key] = seconds
        return seconds

    def objective_value(self, option: StageOption) -> float:
        """The separable part of the objective (latency is not separable; dollars break its ties)."""
        if self.objective is Objective.power:
            return option.watts
        return option.usd_per_hour

    def critical_path(self, choice: list[int], slo: bool = True) -> tuple[float, list[int]]:
        """Longest path (seconds) through the chosen options, transfers included, and its stages."""
        finish = [0.0] * len(self.names)
        came_from: list[int | None] = [None] * len(self.names)
        for s in range(len(self.names)):
            opt = self.options[s][choice[s]]
            start, best = 0.0, None
            for u in self.preds[s]:
                ready = finish[u] + self.transfer_s(u, self.options[u][choice[u]].hardware_class, opt.hardware_class)
                if ready > start or best is None:
                    start, best = max(start, ready), u
            finish[s] = start + (opt.latency_slo_s if slo else opt.latency_p50_s)
            came_from[s] = best
        end = max(range(len(finish)), key=finish.__getitem__)
        path = [end]
        while came_from[path[-1]] is not None:
            path.append(came_from[path[-1]])  # type: ignore[arg-type]
        return finish[end], path[::-1]

    def device_use(self, choice: list[int]) -> dict[str, int]:
        use: dict[str, int] = {}
        for s, o in enumerate(choice):
            for cls, n in self.options[s][o].devices.items():
                use[cls] = use.get(cls, 0) + n
        return use

    def group_watts(self, choice: list[int]) -> list[tuple[float, float]]:
        """(expected, capped peak) watts per power group."""
        out = []
        for group in self.groups:
            expected = peak = 0.0
            for s, o in enumerate(choice):
                opt = self.options[s][o]
                expected += sum(w for c, w in opt.watts_by_class.items() if c in group.classes)
                peak += sum(w for c, w in opt.peak_watts_by_class.items() if c in group.classes) * group.cap_fraction
            out.append((expected, peak))
        return out


def _dominated(candidate: StageOption, kept: list[StageOption]) -> bool:
    return any(
        k.usd_per_hour <= candidate.usd_per_hour and k.watts <= candidate.watts
        and k.latency_slo_s <= candidate.latency_slo_s and k.latency_p50_s <= candidate.latency_p50_s
        and all(n <= candidate.devices.get(c, 0) for c, n in k.devices.items())
        for k in kept
    )


def pareto(options: list[StageOption]) -> list[StageOption]:
    """Drop options beaten on latency, dollars, watts and devices by one on the same classes."""
    groups: dict[tuple[str, str | None], list[StageOption]] = {}
    for opt in options:
        groups.setdefault((opt.hardware_class, opt.draft_class), []).append(opt)
    out: list[StageOption] = []
    for members in groups.values():
        members.sort(key=lambda o: (o.latency_slo_s, o.usd_per_hour, o.watts, o.latency_p50_s))
        kept: list[StageOption] = []
        for opt in members:
            if not _dominated(opt, kept):
                kept.append(opt)
        out += kept
    return out


@dataclass(frozen=True)
class _Shape:
    """A (class, tp, batch, draft) configuration before replicas are chosen."""

    hw_name: str
    tp: int
    batch: int
    prefill_s: float
    decode_s: float
    prefill_share: float
    decode_share: float
    draft_class: str | None = None
    draft_busy_s: float = 0.0

    @property
    def service_s(self) -> float:
        return self.prefill_s + self.decode_s


class _StageCosting:
    def __init__(self, spec: AgentWorkflowSpec, inventory: Inventory, params: cost.CostParameters):
        self.spec, self.inventory, self.params = spec, inventory, params
        self.batch_sizes = BATCH_SIZES if len(spec.stages) <= LARGE_GRAPH else COARSE_BATCH_SIZES
        allowed = set(spec.placement.allowed_classes) or set(inventory.classes)
        self.allowed = sorted(c for c in allowed if c in inventory.classes and inventory.free_devices.get(c, 0) > 0)

    def classes_for(self, stage: Stage) -> tuple[list[str], str | None]:
        pinned = self.spec.placement.pinned.get(stage.name)
        if pinned is None:
            return self.allowed, None if self.allowed else "no allowed hardware class has free devices"
        if pinned not in self.inventory.classes:
            return [], f"pinned to unknown HardwareClass {pinned!r}"
        if self.inventory.free_devices.get(pinned, 0) <= 0:
            return [], f"pinned to {pinned}, which has no free devices"
        return [pinned], None

    def shapes(self, stage: Stage, classes: list[str]) -> tuple[list[_Shape], str | None]:
        if stage.kind is not StageKind.llm:
            out = []
            for name in classes:
                hw = self.inventory.classes[name]
                seconds = cost.generic_call_seconds(stage, hw, self.params)
                share = cost.generic_compute_share(stage, hw, self.params)
                slots = CONCURRENCY if stage.measured_latency_ms is not None else (1,)
                out += [_Shape(name, 1, b, seconds, 0.0, share, 0.0) for b in slots]
            return out, None
        model = self.inventory.model_profiles.get(stage.model or "")
        if model is None:
            return [], f"unknown ModelProfile {stage.model!r}"
        sd = stage.speculative_decoding if stage.speculative_decoding and stage.speculative_decoding.enabled else None
        draft = cost.draft_model_profile(sd, model, self.inventory.model_profiles) if sd else None
        if sd is not None and sd.method.value == "draftModel" and draft is None:
            return [], f"unknown draft ModelProfile {sd.draft_model!r}"
        out = []
        for name in classes:
            out += self._llm_shapes(stage, model, name, sd, draft)
        if not out:
            need = cost.memory_needed_bytes(model, 1, (stage.input_tokens or 0) + (stage.output_tokens or 0))
            return [], (f"{stage.model} needs {need / 1e9:.1f} GB (weights + KV of one sequence), more than one node "
                        f"of any allowed class holds")
        return out, None

    def _draft_classes(self, sd, target: str, draft: ModelProfileSpec | None, context: float, batch: int) -> list[str | None]:
        if sd is None or draft is None or not cost.draft_can_move(sd) or sd.draft_placement == "colocated":
            return [None]
        if sd.draft_placement != "auto":
            return [None] if sd.draft_placement == target else [sd.draft_placement]
        out: list[str | None] = [None]
        for name in self.allowed:
            if name != target:
                hw = self.inventory.classes[name]
                if cost.memory_needed_bytes(draft, batch, context) <= hw.memory_gi_b * cost.GIB * self.params.efficiency.usable_memory:
                    out.append(name)
        return out

    def _llm_shapes(self, stage: Stage, model: ModelProfileSpec, name: str, sd, draft) -> list[_Shape]:
        hw = self.inventory.classes[name]
        n_in, n_out = stage.input_tokens or 1, stage.output_tokens or 1
        context = n_in + n_out
        colocated_extra = draft.weight_bytes() if draft is not None else 0.0
        tp_min = cost.min_tensor_parallel(model, hw, 1, context, colocated_extra, self.params)
        if tp_min is None:
            return []
        free = self.inventory.free_devices.get(name, 0)
        shapes = []
        for tp in (tp_min, 2 * tp_min):
            if tp > hw.devices_per_node or tp > free:
                continue
            for batch in self.batch_sizes:
                for draft_class in self._draft_classes(sd, name, draft, context, batch):
                    if draft_class is not None and draft_class not in self.inventory.classes:
                        continue
                    extra = colocated_extra if draft_class is None else 0.0
                    need = cost.memory_needed_bytes(model, batch, context, extra)
                    if need > tp * hw.memory_gi_b * cost.GIB * self.params.efficiency.usable_memory:
                        continue
                    draft_hw = self.inventory.classes[draft_class] if draft_class else None
                    t = cost.llm_call_time(model, hw, n_in, n_out, batch, tp, sd, draft, draft_hw,
                                           cost.engine_parameters(model, self.params))
                    shapes.append(_Shape(name, tp, batch, t.prefill_s, t.decode_s, t.prefill_compute_share,
                                         t.decode_compute_share, draft_class, t.draft_busy_s))
        return shapes

    def options(self, stage: Stage, shapes: list[_Shape]) -> list[StageOption]:
        """Every shape at the replica counts that keep up with the rate; ``self.shortfall`` says why when none does."""
        self.shortfall: tuple[int, str, int] | None = None  # (devices needed, class, free) of the smallest shape
        slo = self.spec.slo
        rate = slo.requests_per_second * stage.fan_out * stage.iterations
        q_slo = (slo.percentile / 100) ** (1 / stage.fan_out)  # the slowest of fan_out parallel calls
        q_med = 0.5 ** (1 / stage.fan_out)
        out = []
        for shape in shapes:
            hw = self.inventory.classes[shape.hw_name]
            service = shape.service_s
            load = rate * service
            r_min = max(1, math.ceil(load / (shape.batch * MAX_UTILIZATION)))
            free = self.inventory.free_devices.get(shape.hw_name, 0)
            r_max = min(r_min + EXTRA_REPLICAS, free // shape.tp)
            if shape.draft_class is not None:
                r_max = min(r_max, self.inventory.free_devices.get(shape.draft_class, 0))
            if r_max < r_min:
                need = (r_min * shape.tp, shape.hw_name, free)
                if self.shortfall is None or need < self.shortfall:
                    self.shortfall = need
                continue
            counts = list(range(r_min, r_max + 1))
            waiting = erlang_c_by_servers(load, [r * shape.batch for r in counts])
            for r in counts:
                servers = r * shape.batch
                rho = load / servers
                w_slo = wait_quantile(servers, rate, service, q_slo, waiting[servers])
                w_med = wait_quantile(servers, rate, service, q_med, waiting[servers])
                devices = {shape.hw_name: r * shape.tp}
                busy = [(rho * shape.prefill_s / service, shape.prefill_share),
                        (rho * shape.decode_s / service, shape.decode_share)] if service > 0 else []
                watts = {shape.hw_name: cost.expected_watts(hw, r * shape.tp, busy, self.params)}
                peak = {shape.hw_name: r * shape.tp * hw.tdp_watts}
                usd = cost.usd_per_hour(hw, r * shape.tp, watts[shape.hw_name], self.params)
                if shape.draft_class is not None:
                    dhw = self.inventory.classes[shape.draft_class]
                    devices[shape.draft_class] = r
                    watts[shape.draft_class] = cost.expected_watts(dhw, r, [(rho * shape.draft_busy_s / service, 0.0)], self.params)
                    peak[shape.draft_class] = r * dhw.tdp_watts
                    usd += cost.usd_per_hour(dhw, r, watts[shape.draft_class], self.params)
                out.append(StageOption(
                    hardware_class=shape.hw_name, replicas=r, tensor_parallel=shape.tp, batch_size=shape.batch,
                    service_s=service, prefill_s=shape.prefill_s, decode_s=shape.decode_s,
                    latency_p50_s=stage.iterations * (service + w_med),
                    latency_slo_s=stage.iterations * (service + w_slo),
                    utilization=rho, devices=devices, watts_by_class=watts, peak_watts_by_class=peak,
                    usd_per_hour=usd, draft_class=shape.draft_class, watts=sum(watts.values()),
                ))
                if w_slo == 0.0 and w_med == 0.0:
                    break  # no queueing left to cut: more replicas would only cost more
        return pareto(out)


def stage_order(spec: AgentWorkflowSpec) -> list[Stage]:
    graph = nx.DiGraph()
    by_name = {s.name: s for s in spec.stages}
    graph.add_nodes_from(by_name)
    for s in spec.stages:
        graph.add_edges_from((d, s.name) for d in s.depends_on if d in by_name)
    return [by_name[n] for n in nx.lexicographical_topological_sort(graph)]


def build_problem(spec: AgentWorkflowSpec, inventory: Inventory, objective: Objective | None = None,
                  params: cost.CostParameters = cost.DEFAULT) -> Problem:
    """Every stage's candidates; stages with none are listed in ``unplaceable`` with the reason."""
    costing = _StageCosting(spec, inventory, params)
    stages = stage_order(spec)
    index = {s.name: i for i, s in enumerate(stages)}
    options: list[list[StageOption]] = []
    unplaceable: dict[str, str] = {}
    for stage in stages:
        classes, why = costing.classes_for(stage)
        shapes, why_shapes = costing.shapes(stage, classes) if classes else ([], why)
        opts = costing.options(stage, shapes) if shapes else []
        if not opts:
            reason = why_shapes or why
            if reason is None and costing.shortfall is not None:
                need, cls, free = costing.shortfall
                rate = spec.slo.requests_per_second * stage.fan_out * stage.iterations
                reason = (f"keeping up with {rate:g} calls/s needs at least {need} devices of {cls} "
                          f"(the fewest of any allowed class), {free} free")
            unplaceable[stage.name] = reason or "no allowed class can run it"
        options.append(opts)
    preds = [[index[d] for d in s.depends_on if d in index] for s in stages]
    succs: list[list[int]] = [[] for _ in stages]
    for v, ps in enumerate(preds):
        for u in ps:
            succs[u].append(v)
    return Problem(
        names=[s.name for s in stages], stages=stages, options=options, preds=preds, succs=succs,
        classes=dict(inventory.classes), capacity=dict(inventory.free_devices), groups=inventory.power_groups,
        slo_s=spec.slo.latency_ms / 1000, percentile=spec.slo.percentile,
        requests_per_second=spec.slo.requests_per_second, objective=objective or spec.placement.objective,
        params=params, unplaceable=unplaceable,
    )
