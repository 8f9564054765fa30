"""Hardware classes as the simulator runs them: per-token costs, batching, KV room, power, price.

The per-token figures come from the planner's roofline (``tessera.planner.cost``), calibrated so
that an A100 decode step takes HEXGEN-TEXT2SQL's 0.035 s (docs/references.md). Classes it measured (A100, H100,
A6000, L40S) keep its relative step times and per-token decode seconds; the others take the
roofline's ratio to the A100.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tessera.api.hardware import HardwareClass, HardwareClassSpec
from tessera.api.model_profile import ModelProfile, ModelProfileSpec
from tessera.examples import example_path
from tessera.planner import cost

REFERENCE_CLASS = "a100-80gb"
# docs/references.md (HEXGEN-TEXT2SQL, Llama-3.1-70B 4-bit): time of a step relative to the A100.
REFERENCE_STEP_FACTOR = {"a100-80gb": 1.0, "h100-sxm": 0.48, "a6000": 1.9, "l40s": 1.8}
# docs/references.md: per-token decode seconds (the H100's from its 0.48 factor).
REFERENCE_DECODE_S = {"a100-80gb": 0.035, "h100-sxm": 0.035 * 0.48, "a6000": 0.058, "l40s": 0.0545}
DECODE_CONTEXT_TOKENS = 4096  # cache length at which batched decode steps are timed
MAX_BATCH = 64  # running calls per engine, beside the KV-cache limit


def default_inventory_dir() -> Path:
    """The example inventory shipped with the package (the repository's examples/inventory)."""
    return example_path("inventory")


def load_inventory(folder: Path) -> tuple[dict[str, HardwareClassSpec], dict[str, ModelProfileSpec]]:
    """HardwareClass and ModelProfile specs from every YAML file in ``folder``, by name."""
    import yaml

    if not folder.is_dir():
        raise FileNotFoundError(f"inventory: {folder} is not a folder of HardwareClass/ModelProfile YAML")
    classes: dict[str, HardwareClassSpec] = {}
    models: dict[str, ModelProfileSpec] = {}
    for file in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            kind = (doc or {}).get("kind")
            if kind == "HardwareClass":
                hc = HardwareClass.model_validate(doc)
                classes[hc.metadata.name] = hc.spec
            elif kind == "ModelProfile":
                mp = ModelProfile.model_validate(doc)
                models[mp.metadata.name] = mp.spec
    return classes, models


@dataclass(frozen=True)
class EngineClass:
    """One hardware class serving one model on one device (no tensor parallelism)."""

    name: str
    spec: HardwareClassSpec
    model: ModelProfileSpec
    calibration: float  # REFERENCE A100 decode step / roofline A100 decode step

    @cached_property
    def params(self) -> cost.CostParameters:
        """The cost model's factors for this model's serving engine (its ModelProfile's engineProfile)."""
        return cost.engine_parameters(self.model)

    @cached_property
    def kv_tokens(self) -> int:
        usable = self.spec.memory_gi_b * cost.GIB * cost.DEFAULT.efficiency.usable_memory
        return int((usable - self.model.weight_bytes()) / self.model.kv_bytes())

    @cached_property
    def prefill_s_per_token(self) -> float:
        return cost.prefill_seconds(self.model, self.spec, 512) / 512 * self.calibration

    @cached_property
    def decode_step_s(self) -> tuple[float, ...]:
        """Decode iteration time with 1..MAX_BATCH sequences; batch 1 is REFERENCE's figure where it has one."""
        roofline = [
            cost.decode_step_seconds(self.model, self.spec, n, DECODE_CONTEXT_TOKENS, params=self.params) * self.calibration
            for n in range(1, MAX_BATCH + 1)
        ]
        single = REFERENCE_DECODE_S.get(self.name, roofline[0])
        return tuple(t * single / roofline[0] for t in roofline)

    @cached_property
    def decode_watts(self) -> tuple[float, ...]:
        """Draw while decoding 1..MAX_BATCH sequences (more compute-bound, more watts, as the batch grows)."""
        return tuple(
            cost.busy_watts(self.spec, cost.decode_compute_share(self.model, self.spec, n, DECODE_CONTEXT_TOKENS,
                                                                 params=self.params), self.params)
            for n in range(1, MAX_BATCH + 1)
        )

    @cached_property
    def prefill_watts(self) -> float:
        return cost.phase_watts(self.spec, "prefill", self.params)

    def raw_call_s(self, input_tokens: float, output_tokens: float) -> tuple[float, float]:
        """(prefill, decode) seconds of one call alone on this class, straight from the per-token figures."""
        return input_tokens * self.prefill_s_per_token, output_tokens * self.decode_step_s[0]

    def step_factor(self, reference: "EngineClass", input_tokens: float, output_tokens: float) -> float:
        """Time of a step here relative to the reference class: the paper's factor (docs/references.md), else the roofline's."""
        if self.name in REFERENCE_STEP_FACTOR:
            return REFERENCE_STEP_FACTOR[self.name]
        return sum(self.raw_call_s(input_tokens, output_tokens)) / sum(reference.raw_call_s(input_tokens, output_tokens))

    def fits(self, tokens: int) -> bool:
        return self.kv_tokens >= tokens

    @property
    def usd_per_hour(self) -> float:
        return self.spec.usd_per_hour


def engine_classes(
    names: list[str], model_name: str, inventory: Path | None = None
) -> dict[str, EngineClass]:
    """EngineClasses for ``names`` serving ``model_name``; every class must hold the model on one device."""
    classes, models = load_inventory(inventory or default_inventory_dir())
    if model_name not in models:
        raise KeyError(f"model: no ModelProfile {model_name!r} in the inventory (have {', '.join(sorted(models))})")
    model = models[model_name]
    missing = [n for n in [*names, REFERENCE_CLASS] if n not in classes]
    if missing:
        raise KeyError(f"fleet: no HardwareClass {missing[0]!r} in the inventory (have {', '.join(sorted(classes))})")
    raw_a100 = cost.decode_step_seconds(model, classes[REFERENCE_CLASS], 1, DECODE_CONTEXT_TOKENS,
                                        params=cost.engine_parameters(model))
    calibration = REFERENCE_DECODE_S[REFERENCE_CLASS] / raw_a100
    out = {}
    for name in dict.fromkeys([*names, REFERENCE_CLASS]):
        ec = EngineClass(name, classes[name], model, calibration)
        if ec.kv_tokens <= 0:
            raise ValueError(f"fleet: {name} cannot hold {model_name} on one device")
        out[name] = ec
    return out
