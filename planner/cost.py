"""Roofline cost model: time, memory, power and dollars of one stage on one hardware class.

Every function here is pure and takes the API's spec objects, so the simulator and the workers can
ask the same questions the planner asks. Units: seconds, bytes, FLOPs, watts, US dollars.

LLM calls split into prefill (compute-bound: 2 x params x tokens FLOPs plus causal attention) and
decode (memory-bound: every step streams the weights once and each sequence's KV cache, amortized
over the batch). The efficiency factors say what fraction of the spec sheet's peak a real kernel
reaches; their defaults come from the H100 calibration in docs/calibration.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.api.hardware import Dtype, HardwareClassSpec
from tessera.api.model_profile import EngineProfile, ModelProfileSpec
from tessera.api.workflow import DraftMethod, SpeculativeDecoding, Stage, StageKind

GIB = 2**30
# The CUDA-graph engine profile, fitted by ``python -m tessera.planner.calibration.fit --engine``.
DECODE_BANDWIDTH, DECODE_COMPUTE, LAYER_OVERHEAD_S = 0.72, 0.35, 75e-6
MEMORY_BOUND_DYNAMIC, COMPUTE_EXPONENT = 0.46, 0.75


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak reached by real kernels, and fixed costs the roofline leaves out."""

    prefill_compute: float = 0.58  # of dense peak FLOP/s, prefill GEMMs + attention (calibrated, H100)
    decode_bandwidth: float = 0.82  # of peak memory bandwidth, streaming weights + KV (calibrated, H100)
    decode_compute: float = 0.5  # of peak FLOP/s, the decode GEMMs once batches grow compute-bound (calibrated)
    layer_overhead_s: float = 110e-6  # per layer and forward pass: small kernels (norms, rotary; calibrated, H100)
    interconnect: float = 0.7  # of interconnect bandwidth reached by all-reduce
    allreduce_latency_s: float = 10e-6  # per all-reduce, tensor parallelism
    generic_compute: float = 0.35  # non-LLM stages: of peak FLOP/s (fp32)
    generic_bandwidth: float = 0.6  # non-LLM stages: of peak memory bandwidth
    generic_overhead_s: float = 1e-3  # non-LLM stages: fixed cost per call (dispatch, serialization)
    usable_memory: float = 0.9  # of device memory for weights + KV (the rest: activations, fragmentation)


@dataclass(frozen=True)
class PowerModel:
    """Draw per device: idle floor, plus a dynamic part that grows with how compute-bound the phase is.

    dynamic fraction of (TDP - idle) = memory_bound_dynamic + (1 - memory_bound_dynamic) x share^compute_exponent,
    share = 1 for a compute-bound phase (prefill reaches TDP), near 0 for a memory-bound one. Fitted to the
    H100 (docs/calibration.md): 694 W prefill, 186 W decode at batch 8, 276 W at batch 128, 128 W idle;
    POLCA saw H200 decode at 137-300 W of 700 W.
    """

    memory_bound_dynamic: float = 0.1
    compute_exponent: float = 1.5


@dataclass(frozen=True)
class Prices:
    """Energy on top of the class's $/h (which holds capex amortization and hosting). Not published: ours."""

    usd_per_kwh: float = 0.10
    pue: float = 1.3  # facility power per IT watt


@dataclass(frozen=True)
class CostParameters:
    efficiency: Efficiency = Efficiency()
    power: PowerModel = PowerModel()
    prices: Prices = Prices()
    network_hop_s: float = 50e-6  # one message between nodes, software stack included


# The factors of the first H100 calibration, an eager layer loop (docs/calibration.md): engines that launch
# one kernel at a time pay ~110 us per layer and draw little while decoding.
UNFUSED = CostParameters()
# Whole models stepping as CUDA graphs over a KV cache, on an H200 with NVML watts (docs/calibration.md).
CUDA_GRAPHS = CostParameters(
    efficiency=Efficiency(decode_bandwidth=DECODE_BANDWIDTH, decode_compute=DECODE_COMPUTE, layer_overhead_s=LAYER_OVERHEAD_S),
    power=PowerModel(memory_bound_dynamic=MEMORY_BOUND_DYNAMIC, compute_exponent=COMPUTE_EXPONENT),
)
ENGINE_PROFILES = {EngineProfile.cuda_graphs: CUDA_GRAPHS, EngineProfile.unfused: UNFUSED}
DEFAULT = CUDA_GRAPHS  # what serving engines do; a ModelProfile's engineProfile picks another


def engine_parameters(model: ModelProfileSpec, params: CostParameters = DEFAULT) -> CostParameters:
    """The factors to cost ``model`` with: its engine profile's unless the caller chose others than DEFAULT."""
    return ENGINE_PROFILES[model.engine_profile] if params is DEFAULT else params

# Weight-only quantized models (int8/int4) dequantize and compute in bf16.
COMPUTE_DTYPE = {
    Dtype.fp32: Dtype.fp32, Dtype.bf16: Dtype.bf16, Dtype.fp16: Dtype.fp16,
    Dtype.fp8: Dtype.fp8, Dtype.int8: Dtype.bf16, Dtype.int4: Dtype.bf16,
}
DRAFT_HEAD_VOCAB = 128_256  # vocabulary assumed for a draft head's own LM head (Llama 3's)
LAYER_SKIP_FRACTION = 0.25  # layerSkip drafts with the first quarter of the target's layers


# --- LLM phases -------------------------------------------------------------------------------------


def _bandwidth(hw: HardwareClassSpec, eff: Efficiency) -> float:
    return hw.memory_bandwidth_g_bps * 1e9 * eff.decode_bandwidth


def _allreduce_s(tokens: float, model: ModelProfileSpec, hw: HardwareClassSpec, tp: int, eff: Efficiency) -> float:
    """Two ring all-reduces of the activations per layer (after attention and after the MLP)."""
    if tp <= 1:
        return 0.0
    size = tokens * model.hidden_size * 2  # bf16 activations
    per = 2 * (tp - 1) / tp * size / (hw.interconnect_g_bps * 1e9 * eff.interconnect) + eff.allreduce_latency_s
    return 2 * model.layers * per


def prefill_flops(model: ModelProfileSpec, tokens: float, sequences: int = 1) -> float:
    """2 x params x tokens for the GEMMs, plus causal attention: 2 x layers x tokens^2 x hidden per sequence."""
    return sequences * (2 * model.parameters_billions * 1e9 * tokens + 2 * model.layers * tokens**2 * model.hidden_size)


def prefill_seconds(
    model: ModelProfileSpec, hw: HardwareClassSpec, tokens: float, sequences: int = 1, tp: int = 1,
    params: CostParameters = DEFAULT,
) -> float:
    """Prefill of ``sequences`` prompts of ``tokens`` each, batched together on ``tp`` devices."""
    eff = params.efficiency
    peak = hw.peak_flops(COMPUTE_DTYPE[model.dtype]) * tp
    compute = prefill_flops(model, tokens, sequences) / (peak * eff.prefill_compute)
    weights = model.weight_bytes() / (_bandwidth(hw, eff) * tp)
    return max(compute, weights) + model.layers * eff.layer_overhead_s + _allreduce_s(tokens * sequences, model, hw, tp, eff)


def decode_step_seconds(
    model: ModelProfileSpec, hw: HardwareClassSpec, batch: int, context: float, tp: int = 1,
    tokens_per_sequence: int = 1, params: CostParameters = DEFAULT,
) -> float:
    """One decode step of ``batch`` sequences with ``context`` tokens cached each.

    Memory-bound: the weights once per step plus every sequence's KV cache; compute-bound once the
    batch (x tokens verified per step, for speculative decoding) is large enough.
    """
    eff = params.efficiency
    tokens = batch * tokens_per_sequence
    traffic = model.weight_bytes() + batch * context * model.kv_bytes()
    memory = traffic / (_bandwidth(hw, eff) * tp)
    peak = hw.peak_flops(COMPUTE_DTYPE[model.dtype]) * tp
    flops = 2 * model.parameters_billions * 1e9 * tokens + 4 * model.layers * tokens * context * model.hidden_size
    compute = flops / (peak * eff.decode_compute)
    return max(memory, compute) + model.layers * eff.layer_overhead_s + _allreduce_s(tokens, model, hw, tp, eff)


def decode_compute_share(
    model: ModelProfileSpec, hw: HardwareClassSpec, batch: int, context: float, tp: int = 1,
    params: CostParameters = DEFAULT,
) -> float:
    """How compute-bound a decode step is (0: purely memory-bound, 1: compute-bound); drives its power."""
    eff = params.efficiency
    memory = (model.weight_bytes() + batch * context * model.kv_bytes()) / (_bandwidth(hw, eff) * tp)
    flops = 2 * model.parameters_billions * 1e9 * batch
    compute = flops / (hw.peak_flops(COMPUTE_DTYPE[model.dtype]) * tp * eff.decode_compute)
    return min(1.0, compute / memory)


def memory_needed_bytes(model: ModelProfileSpec, batch: int, context: float, extra_weight_bytes: float = 0.0) -> float:
    """Weights plus the KV cache of ``batch`` sequences of ``context`` tokens."""
    return model.weight_bytes() + extra_weight_bytes + batch * context * model.kv_bytes()


def min_tensor_parallel(
    model: ModelProfileSpec, hw: HardwareClassSpec, batch: int, context: float, extra_weight_bytes: float = 0.0,
    params: CostParameters = DEFAULT,
) -> int | None:
    """Smallest power-of-two tensor-parallel degree (within one node) whose devices hold the model; None if none."""
    need = memory_needed_bytes(model, batch, context, extra_weight_bytes)
    per_device = hw.memory_gi_b * GIB * params.efficiency.usable_memory
    tp = 1
    while tp <= hw.devices_per_node:
        if need <= per_device * tp:
            return tp
        tp *= 2
    return None


# --- speculative decoding ---------------------------------------------------------------------------


def expected_tokens_per_step(acceptance: float, draft_length: int) -> float:
    """E = (1 - a^(g+1)) / (1 - a): tokens a target step yields with g drafted tokens at acceptance a."""
    return (1 - acceptance ** (draft_length + 1)) / (1 - acceptance)


def speculative_speedup(acceptance: float, draft_length: int, draft_cost_ratio: float) -> float:
    """E / (g c + 1), c the draft/target step-time ratio (Leviathan et al.)."""
    return expected_tokens_per_step(acceptance, draft_length) / (draft_length * draft_cost_ratio + 1)


def draft_model_profile(
    sd: SpeculativeDecoding, target: ModelProfileSpec, profiles: dict[str, ModelProfileSpec]
) -> ModelProfileSpec | None:
    """The draft as a model the roofline can time; None for drafts that are not a separate model.

    ngram drafts by prompt lookup (no model); layerSkip runs the target's own first layers (timed as
    a fraction of the target's step). A draft head is one decoder layer plus its LM head.
    """
    if sd.method is DraftMethod.draft_model:
        return profiles.get(sd.draft_model or "")
    if sd.method is DraftMethod.quantized:
        return target.model_copy(update={"dtype": Dtype.int8, "kv_bytes_per_token": target.kv_bytes()})
    if sd.method is DraftMethod.draft_head:
        layer = 12 * target.hidden_size**2
        head = DRAFT_HEAD_VOCAB * target.hidden_size
        return target.model_copy(update={
            "parameters_billions": (layer + head) / 1e9, "layers": 1, "kv_bytes_per_token": target.kv_bytes() / target.layers,
        })
    return None


def draft_can_move(sd: SpeculativeDecoding) -> bool:
    """Whether the draft may run on another device than the target (it has weights of its own)."""
    return sd.method in (DraftMethod.draft_model, DraftMethod.draft_head, DraftMethod.quantized)


# --- one LLM call -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMCallTime:
    prefill_s: float  # one round of prefills for the whole batch (a slot waits for all of them)
    decode_s: float  # all output tokens of one call
    prefill_compute_share: float
    decode_compute_share: float
    draft_busy_s: float = 0.0  # of the decode time, the part the draft's device works (when it runs apart)

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


def llm_call_time(
    model: ModelProfileSpec, hw: HardwareClassSpec, input_tokens: float, output_tokens: float, batch: int = 1,
    tp: int = 1, speculative: SpeculativeDecoding | None = None, draft: ModelProfileSpec | None = None,
    draft_hw: HardwareClassSpec | None = None, params: CostParameters = DEFAULT,
) -> LLMCallTime:
    """Service time of one call under continuous batching with ``batch`` concurrent sequences.

    A batch slot holds a call for one round of prefills (every slot's newcomer is prefilled once
    per call lifetime) plus the call's own decode steps. With speculative decoding each target
    step verifies g+1 tokens and yields E of them; the draft's g steps run before it (on
    ``draft_hw`` when the draft sits on another class, adding one network round trip per step).
    """
    context = input_tokens + output_tokens / 2  # mean cache length over the decode
    prefill = prefill_seconds(model, hw, input_tokens, batch, tp, params)
    if speculative is None or not speculative.enabled:
        step = decode_step_seconds(model, hw, batch, context, tp, params=params)
        return LLMCallTime(prefill, output_tokens * step, 1.0, decode_compute_share(model, hw, batch, context, tp, params))
    gamma, alpha = speculative.draft_length, speculative.expected_acceptance_rate
    verify = decode_step_seconds(model, hw, batch, context, tp, tokens_per_sequence=gamma + 1, params=params)
    target_step = decode_step_seconds(model, hw, batch, context, tp, params=params)
    draft_busy = 0.0
    if speculative.method is DraftMethod.layer_skip:
        draft_s = gamma * LAYER_SKIP_FRACTION * target_step
    elif draft is None:  # ngram: a prompt lookup on the host, no model to run
        draft_s = 0.0
    elif draft_hw is None:  # colocated: the draft shares the target's devices
        draft_s = gamma * decode_step_seconds(draft, hw, batch, context, tp, params=params)
    else:
        draft_busy = gamma * decode_step_seconds(draft, draft_hw, batch, context, 1, params=params)
        message = batch * (gamma + 1) * model.hidden_size * 2  # hidden states / token ids each way
        network = min(hw.network_g_bps, draft_hw.network_g_bps) / 8 * 1e9
        draft_s = draft_busy + 2 * (params.network_hop_s + message / network)
    per_token = (verify + draft_s) / expected_tokens_per_step(alpha, gamma)
    share = decode_compute_share(model, hw, batch * (gamma + 1), context, tp, params)
    return LLMCallTime(prefill, output_tokens * per_token, 1.0, share, output_tokens * draft_busy / expected_tokens_per_step(alpha, gamma))


def stage_service_time(
    stage: Stage, hw: HardwareClassSpec, model: ModelProfileSpec | None = None, batch: int = 1, tp: int = 1,
    profiles: dict[str, ModelProfileSpec] | None = None, draft_hw: HardwareClassSpec | None = None,
    params: CostParameters = DEFAULT,
) -> tuple[float, float]:
    """(prefill_s, decode_s) of one call of a stage; non-LLM stages report all their time as prefill.

    ``profiles`` resolves a draftModel's ModelProfile; ``draft_hw`` places the draft on another class.
    """
    if stage.kind is StageKind.llm:
        if model is None:
            raise ValueError(f"stage {stage.name!r}: an llm stage needs its ModelProfile")
        sd = stage.speculative_decoding
        draft = draft_model_profile(sd, model, profiles or {}) if sd is not None else None
        timing = llm_call_time(model, hw, stage.input_tokens or 1, stage.output_tokens or 1, batch, tp, sd, draft,
                               draft_hw, params)
        return timing.prefill_s, timing.decode_s
    return generic_call_seconds(stage, hw, params), 0.0


# --- non-LLM stages ---------------------------------------------------------------------------------


def generic_call_seconds(stage: Stage, hw: HardwareClassSpec, params: CostParameters = DEFAULT) -> float:
    """A retrieval, tool, sql or transform call: measured latency if given, else a roofline of its estimates."""
    if stage.measured_latency_ms is not None:
        return stage.measured_latency_ms / 1000
    eff = params.efficiency
    compute = (stage.gflops or 0) * 1e9 / (hw.peak_flops(Dtype.fp32) * eff.generic_compute)
    memory = (stage.megabytes or 0) * 1e6 / (hw.memory_bandwidth_g_bps * 1e9 * eff.generic_bandwidth)
    return max(compute, memory) + eff.generic_overhead_s


def generic_compute_share(stage: Stage, hw: HardwareClassSpec, params: CostParameters = DEFAULT) -> float:
    if stage.measured_latency_ms is not None:
        return 0.0  # a measured call mostly waits (a tool's API, a database)
    eff = params.efficiency
    compute = (stage.gflops or 0) * 1e9 / (hw.peak_flops(Dtype.fp32) * eff.generic_compute)
    memory = (stage.megabytes or 0) * 1e6 / (hw.memory_bandwidth_g_bps * 1e9 * eff.generic_bandwidth)
    return compute / max(compute, memory) if max(compute, memory) > 0 else 0.0


# --- transfer, power, dollars -----------------------------------------------------------------------


def transfer_seconds(payload_bytes: float, sender: HardwareClassSpec, receiver: HardwareClassSpec,
                     params: CostParameters = DEFAULT) -> float:
    """Output of one stage to a stage on another class: one network hop over the slower of the two links."""
    bandwidth = min(sender.network_g_bps, receiver.network_g_bps) / 8 * 1e9
    return params.network_hop_s + payload_bytes / bandwidth


def busy_watts(hw: HardwareClassSpec, compute_share: float, params: CostParameters = DEFAULT) -> float:
    """Draw of one device while working: TDP when compute-bound, far less when memory-bound."""
    power = params.power
    dynamic = power.memory_bound_dynamic + (1 - power.memory_bound_dynamic) * min(1.0, compute_share) ** power.compute_exponent
    return hw.idle_watts + (hw.tdp_watts - hw.idle_watts) * dynamic


def phase_watts(hw: HardwareClassSpec, phase: str, params: CostParameters = DEFAULT) -> float:
    """Draw of one device per phase: 'prefill' (compute-bound, near TDP), 'decode' (memory-bound), 'idle'."""
    share = {"prefill": 1.0, "decode": 0.0}.get(phase)
    return hw.idle_watts if share is None else busy_watts(hw, share, params)


def expected_watts(hw: HardwareClassSpec, devices: int, busy_fractions: list[tuple[float, float]],
                   params: CostParameters = DEFAULT) -> float:
    """Mean draw of ``devices`` that spend each (fraction of time, compute share) busy, idle otherwise."""
    dynamic = sum(fraction * (busy_watts(hw, share, params) - hw.idle_watts) for fraction, share in busy_fractions)
    return devices * (hw.idle_watts + dynamic)


def usd_per_hour(hw: HardwareClassSpec, devices: int, watts: float, params: CostParameters = DEFAULT) -> float:
    """Devices held (the class's $/h: capex amortization + hosting) plus the energy they draw."""
    energy = watts / 1000 * params.prices.pue * params.prices.usd_per_kwh
    return devices * hw.usd_per_hour + energy


__all__ = [
    "COMPUTE_DTYPE", "CUDA_GRAPHS", "CostParameters", "DEFAULT", "ENGINE_PROFILES", "Efficiency", "UNFUSED",
    "engine_parameters", "LLMCallTime", "PowerModel",
    "Prices", "busy_watts", "decode_step_seconds", "draft_can_move", "draft_model_profile", "expected_tokens_per_step",
    "expected_watts", "generic_call_seconds", "llm_call_time", "memory_needed_bytes", "min_tensor_parallel",
    "phase_watts", "prefill_flops", "prefill_seconds", "speculative_speedup", "stage_service_time", "transfer_seconds",
    "usd_per_hour",
]
