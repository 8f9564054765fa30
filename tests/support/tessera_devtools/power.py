"""Node power agents on the emulated cluster: the real agent over a fake NVML whose draws a test sets.

The NVML stand-in is the only fake: it answers the calls ``NvmlReader`` makes, in milliwatts, and a
limit below a device's uncapped draw holds its draw at the limit (as a cap does on a GPU).
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry

from tessera.workers.power.agent import Agent, AgentMetrics, serve
from tessera.workers.power.readers import NvmlReader

API = "tessera.dev/v1alpha1"
AGENT_LABELS = {"app.kubernetes.io/component": "power-agent"}


class FakeNvml:
    """The slice of pynvml the reader calls. ``uncapped`` holds each device's draw in watts."""

    def __init__(self, uncapped_watts: list[float], limit_watts: float = 700, min_watts: float = 200):
        self.uncapped = list(uncapped_watts)
        self.limits = [int(limit_watts * 1000)] * len(uncapped_watts)
        self.default = int(limit_watts * 1000)
        self.constraints = (int(min_watts * 1000), self.default)
        self.set_calls: list[tuple[int, int]] = []  # (device, milliwatts), in order

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.uncapped)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return min(int(self.uncapped[handle] * 1000), self.limits[handle])

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self.limits[handle]

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: int) -> tuple[int, int]:
        return self.constraints

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: int) -> int:
        return self.default

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}".encode()  # older bindings return bytes

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100"

    def nvmlDeviceSetPowerManagementLimit(self, handle: int, milliwatts: int) -> None:
        self.set_calls.append((handle, milliwatts))
        self.limits[handle] = milliwatts


class AgentThread:
    """A real node agent for one emulated node: its HTTP server, a tick every ``interval`` s, and its pod."""

    def __init__(self, cluster: Any, node: str, gpus: FakeNvml, interval: float = 0.2, namespace: str = "default",
                 registry: CollectorRegistry | None = None):
        """``registry``: where the agent's metrics go (default: a registry of its own, served on its port)."""
        self.agent = Agent(node, NvmlReader(gpus), lambda: cluster.list(API, "powerbudgets"),
                           metrics=AgentMetrics(registry or CollectorRegistry()))
        self.agent.tick(datetime.now(timezone.utc))
        self.server = serve(self.agent, 0)
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"power agent {node}")
        self.thread.start()
        cluster.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"power-agent-{node}", "namespace": namespace, "labels": dict(AGENT_LABELS)},
            "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "tessera", "ports": [
                {"name": "readings", "containerPort": self.server.server_address[1]}]}]},
            "status": {"podIP": "127.0.0.1"},
        })

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.agent.tick(datetime.now(timezone.utc))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.shutdown()
