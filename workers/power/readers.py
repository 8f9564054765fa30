"""Vendor readers behind one small interface: each device's draw, its enforced limit, and the write path.

Only the standard library and the vendor's own binding are imported here, so the module runs on a
bare GPU machine (the calibration script uses it there). NVML reports milliwatts; readers report watts.
A reader for AMD (``amdsmi``: ``amdsmi_get_power_info`` / ``amdsmi_set_power_cap``) or Gaudi
(``hl-smi``/``hlml``) implements the same three methods and registers in ``READERS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DeviceReading:
    """One device at one moment; watts."""

    index: int
    uuid: str
    name: str
    power_watts: float
    limit_watts: float  # the limit in force (enforced by the driver)
    min_limit_watts: float
    max_limit_watts: float
    default_limit_watts: float


class PowerReader(Protocol):
    vendor: str

    def read(self) -> list[DeviceReading]: ...

    def set_limit(self, index: int, watts: float) -> None: ...

    def close(self) -> None: ...


class LimitOutOfRange(ValueError):
    """A requested limit outside what the device accepts."""


class NvmlReader:
    """NVIDIA through NVML (``nvidia-ml-py``). ``nvml`` is the ``pynvml`` module; tests pass a fake one.

    Reading needs no privilege beyond the device files; ``set_limit`` needs root in the container
    (NVML refuses ``nvmlDeviceSetPowerManagementLimit`` otherwise with NVML_ERROR_NO_PERMISSION).
    """

    vendor = "nvidia"

    def __init__(self, nvml=None):
        if nvml is None:
            import pynvml as nvml
        self.nvml = nvml
        nvml.nvmlInit()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    def read(self) -> list[DeviceReading]:
        out = []
        for index, handle in enumerate(self.handles):
            low, high = self.nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            uuid = self.nvml.nvmlDeviceGetUUID(handle)
            name = self.nvml.nvmlDeviceGetName(handle)
            out.append(DeviceReading(
                index=index, uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                name=name.decode() if isinstance(name, bytes) else name,
                power_watts=self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
                limit_watts=self.nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
                min_limit_watts=low / 1000, max_limit_watts=high / 1000,
                default_limit_watts=self.nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000,
            ))
        return out

    def set_limit(self, index: int, watts: float) -> None:
        """Set device ``index``'s power limit; refuses (before calling NVML) a limit the device does not accept."""
        handle = self.handles[index]
        low, high = self.nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        milliwatts = int(round(watts * 1000))
        if not low <= milliwatts <= high:
            raise LimitOutOfRange(f"device {index}: limit {watts:.0f} W outside [{low / 1000:.0f}, {high / 1000:.0f}] W")
        self.nvml.nvmlDeviceSetPowerManagementLimit(handle, milliwatts)

    def close(self) -> None:
        self.nvml.nvmlShutdown()


READERS = {"nvidia": NvmlReader}


def open_reader(vendor: str) -> PowerReader:
    if vendor not in READERS:
        raise ValueError(f"vendor: no power reader for {vendor!r} (have {', '.join(READERS)})")
    return READERS[vendor]()
