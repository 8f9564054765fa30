"""PowerBudget: a group of nodes sharing provisioned power, possibly oversubscribed (POLCA)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tessera.api.common import API_VERSION, ApiVersion, Condition, DNSSubdomain, ObjectMeta, WireModel


class CappingPolicy(WireModel):
    """POLCA-style two-threshold capping. Thresholds are % of provisioned watts; caps are % of TDP.

    The paper does not publish its thresholds or cap levels: these defaults are ours.
    """

    threshold_t1_percent: float = Field(
        default=85, gt=0, le=100, description="Above this draw, cap low-priority work to lowPriorityCapPercent."
    )
    threshold_t2_percent: float = Field(
        default=95, gt=0, le=100, description="Above this draw, cap everyone to allCapPercent."
    )
    low_priority_cap_percent: float = Field(default=70, gt=0, le=100)
    all_cap_percent: float = Field(default=60, gt=0, le=100)
    uncap_margin_percent: float = Field(
        default=5, ge=0, lt=100, description="Uncap once draw falls this far below T2."
    )
    low_priority_below: int = Field(
        default=1, description="Workflows with spec.priority below this are capped first (at T1)."
    )
    decision_delay_seconds: float = Field(
        default=1, ge=0, le=60, description="A cap or lift acts this long after the draw crosses a threshold.",
    )
    min_cap_seconds: float = Field(
        default=10, ge=0, le=600, description="A cap stays at least this long before it lifts (no flapping).",
    )
    max_over_budget_seconds: float = Field(
        default=5, gt=0, le=3600,
        description="How long the group may draw more than provisionedWatts before the alert fires.",
    )



class PowerBudgetSpec(WireModel):
    hardware_classes: list[DNSSubdomain] = Field(
        default_factory=list, description="HardwareClasses whose devices draw from this budget (empty: all)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Nodes covered, by label (empty: every node of those classes)."
    )
    provisioned_watts: float = Field(gt=0, description="Power provisioned for the group, in watts.")
    oversubscription_percent: float = Field(
        default=0, ge=0, le=100,
        description="Expected draw may reach provisioned x (1 + this/100); capping keeps peaks within budget.",
    )
    capping: CappingPolicy = Field(default_factory=CappingPolicy)

    def expected_limit_watts(self) -> float:
        """What the plans' expected draw may reach: provisioned x (1 + oversubscription/100)."""
        return self.provisioned_watts * (1 + self.oversubscription_percent / 100)


class DeviceCap(WireModel):
    """A power limit the controller decided for one device; the node's agent applies it."""

    device: str = Field(description="node/index, e.g. gpu-node-3/0.")
    watts: float = Field(gt=0)


class PowerBudgetStatus(WireModel):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, description="Valid and WithinBudget.")
    planned_watts: float = 0
    peak_watts: float = 0
    draw_watts: float | None = Field(default=None, description="The group's draw at the last reading (agents).")
    cap_level: str | None = Field(default=None, description="none, low (above T1) or all (above T2).")
    caps: list[DeviceCap] = Field(default_factory=list, description="Power limits in force, least urgent first.")
    last_over_budget_time: str | None = Field(
        default=None, description="When the group last drew more than provisionedWatts (RFC 3339).",
    )


class DevicePower(WireModel):
    """One accelerator as its node's power agent reads it (watts)."""

    index: int = Field(ge=0)
    uuid: str
    power_watts: float = Field(ge=0)
    limit_watts: float = Field(ge=0, description="The power limit in force.")
    default_limit_watts: float = Field(ge=0)
    min_limit_watts: float = Field(ge=0)
    max_limit_watts: float = Field(ge=0)


class NodePowerReadings(WireModel):
    """What a node power agent serves on /readings; the operator's power controller reads it."""

    node: str
    vendor: str
    time: str = Field(description="When the devices were read (RFC 3339).")
    devices: list[DevicePower] = Field(default_factory=list)


def device_key(node: str, index: int) -> str:
    """How a device is named in PowerBudget status.caps (DeviceCap.device)."""
    return f"{node}/{index}"


class PowerBudget(WireModel):
    api_version: ApiVersion = API_VERSION
    kind: Literal["PowerBudget"] = "PowerBudget"
    metadata: ObjectMeta
    spec: PowerBudgetSpec
    status: PowerBudgetStatus | None = None
