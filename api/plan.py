"""The placement plan: the planner's answer and the JSON contract of ``tessera plan -o json``."""

from __future__ import annotations

from pydantic import Field

from tessera.api.common import WireModel


class StagePlan(WireModel):
    hardware_class: str
    replicas: int = Field(ge=1)
    tensor_parallel: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1, ge=1)
    predicted_latency_ms: float = Field(ge=0, description="Service time of one call at the planned batch.")
    watts: float = Field(ge=0, description="Expected draw of the stage's devices at the planned rate.")
    usd_per_hour: float = Field(ge=0)
    draft_hardware_class: str | None = Field(
        default=None, description="Where the speculative-decoding draft runs, when it differs from the target."
    )


class PredictedFigures(WireModel):
    latency_ms_p50: float = Field(ge=0)
    latency_ms_at_slo: float = Field(ge=0, description="End-to-end latency at the SLO percentile.")
    usd_per_hour: float = Field(ge=0)
    usd_per1k_requests: float = Field(ge=0, alias="usdPer1kRequests")
    watts: float = Field(ge=0)


class Plan(WireModel):
    feasible: bool
    objective: str
    stages: dict[str, StagePlan] = Field(default_factory=dict)
    predicted: PredictedFigures | None = None
    binding_constraints: list[str] = Field(default_factory=list)
    solve_seconds: float = Field(default=0, ge=0)

    def devices_by_class(self) -> dict[str, int]:
        """Devices the plan holds per class: replicas x tensor-parallel degree, plus one per replica for a
        draft placed on another class. The one place capacity is counted (planner, operator, builders)."""
        held: dict[str, int] = {}
        for stage in self.stages.values():
            held[stage.hardware_class] = held.get(stage.hardware_class, 0) + stage.replicas * stage.tensor_parallel
            if stage.draft_hardware_class and stage.draft_hardware_class != stage.hardware_class:
                held[stage.draft_hardware_class] = held.get(stage.draft_hardware_class, 0) + stage.replicas
        return held
