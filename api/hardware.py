"""HardwareClass: one kind of device (a GPU generation, a CPU node, another accelerator)."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import Field

from tessera.api.common import API_VERSION, ApiVersion, Condition, ObjectMeta, WireModel

HARDWARE_CLASS_LABEL = "tessera.dev/hardware-class"  # on Nodes: which class their devices belong to


class DeviceType(str, Enum):
    gpu = "gpu"
    cpu = "cpu"
    accelerator = "accelerator"


class Dtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"
    int8 = "int8"
    int4 = "int4"


class Toleration(WireModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


# What every Ray worker pod asks for beside its devices' share: the metrics sidecar.
WORKER_POD_OVERHEAD_CPU = 0.05
WORKER_POD_OVERHEAD_MEMORY_GIB = 0.0625


class PodResources(WireModel):
    """Host resources a Ray worker pod asks for beside each device."""

    cpu: float = Field(default=8, gt=0, description="CPU cores requested per device.")
    memory_gi_b: float = Field(default=64, gt=0, alias="memoryGiB", description="Host memory per device in GiB.")

    def devices_fitting(self, cpu: float | None, memory_gib: float | None) -> int | None:
        """How many devices' host resources, with the pod's overhead, fit into a Node's allocatable CPU and
        memory (None: the Node reports neither)."""
        fits = [int((free - overhead) / per_device + 1e-9)
                for free, overhead, per_device in ((cpu, WORKER_POD_OVERHEAD_CPU, self.cpu),
                                                   (memory_gib, WORKER_POD_OVERHEAD_MEMORY_GIB, self.memory_gi_b))
                if free is not None]
        return max(0, min(fits)) if fits else None


class HardwareClassSpec(WireModel):
    vendor: str = Field(min_length=1, description="Maker of the device, e.g. NVIDIA, AMD, Intel.")
    generation: str = Field(min_length=1, description="Product or generation, e.g. H100-SXM5-80GB.")
    device_type: DeviceType = Field(default=DeviceType.gpu, description="gpu, cpu or accelerator.")
    peak_tflops: dict[Dtype, float] = Field(
        min_length=1, description="Dense peak TFLOP/s per dtype (no sparsity), from the spec sheet."
    )
    memory_gi_b: float = Field(gt=0, alias="memoryGiB", description="Device memory capacity in GiB.")
    memory_bandwidth_g_bps: float = Field(
        gt=0, alias="memoryBandwidthGBps", description="Device memory bandwidth in GB/s."
    )
    interconnect_g_bps: float = Field(
        default=64, gt=0, alias="interconnectGBps",
        description="Device-to-device bandwidth inside a node in GB/s (NVLink, xGMI, PCIe).",
    )
    network_g_bps: float = Field(
        default=100, gt=0, alias="networkGbps", description="Node network bandwidth in Gbit/s (between nodes)."
    )
    tdp_watts: float = Field(gt=0, description="Thermal design power of one device in watts.")
    idle_watts: float = Field(ge=0, description="Draw of one idle device in watts.")
    usd_per_hour: float = Field(gt=0, description="Cost of one device per hour (capex amortization + hosting).")
    devices_per_node: int = Field(default=8, ge=1, description="Devices on one node of this class.")
    resource_name: str | None = Field(
        default="nvidia.com/gpu",
        description="Extended resource that counts devices on a Node (nvidia.com/gpu, amd.com/gpu, "
        "habana.ai/gaudi); null for CPU classes, where each Node counts as one device.",
    )
    ray_accelerator_type: str | None = Field(
        default=None, max_length=64,
        description="Ray's accelerator type of the device (ray.util.accelerators: H100, AMD-Instinct-MI300X-OAM, "
        "Intel-GAUDI, ...); Ray Serve LLM places vLLM replicas by it. Unset: vLLM is not placed by type.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Labels of the Nodes of this class (default: tessera.dev/hardware-class=NAME)."
    )
    tolerations: list[Toleration] = Field(default_factory=list)
    pod_resources: PodResources = Field(default_factory=PodResources)


    def peak_flops(self, dtype: Dtype | str) -> float:
        """Peak FLOP/s for a dtype, falling back to the nearest wider dtype the device lists."""
        order = [Dtype.int4, Dtype.int8, Dtype.fp8, Dtype.fp16, Dtype.bf16, Dtype.fp32]
        start = order.index(Dtype(dtype))
        for candidate in order[start:]:
            if candidate in self.peak_tflops:
                return self.peak_tflops[candidate] * 1e12
        return max(self.peak_tflops.values()) * 1e12


class HardwareClassStatus(WireModel):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, description="Valid: whether the planner uses the class.")
    nodes: int = 0
    devices: int = 0


class HardwareClass(WireModel):
    api_version: ApiVersion = API_VERSION
    kind: Literal["HardwareClass"] = "HardwareClass"
    metadata: ObjectMeta
    spec: HardwareClassSpec
    status: HardwareClassStatus | None = None

    def selector(self) -> dict[str, str]:
        return self.spec.node_selector or {"tessera.dev/hardware-class": self.metadata.name}


