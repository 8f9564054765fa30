"""The node power agent (a DaemonSet pod per accelerator node): ``python -m tessera.workers.power.agent``.

Every ``--interval`` seconds it reads each device's draw and limit through the vendor's reader,
exports them as Prometheus metrics, and serves them as one ``NodePowerReadings`` on /readings (the
operator's power controller reads that). It applies the limits the controller decided, which the
controller publishes in each PowerBudget's ``status.caps`` (device "node/index", watts): the agent only
reads PowerBudgets, so its ServiceAccount needs nothing but get/list on them (docs/power.md). A
device the agent capped and no budget caps any more goes back to its default limit; a device the
agent never capped is never written.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tessera.api import GROUP, VERSION
from tessera.api import metrics as catalogue
from tessera.api.power import DevicePower, NodePowerReadings, device_key
from tessera.workers.power.readers import READERS, DeviceReading, LimitOutOfRange, PowerReader, open_reader

log = logging.getLogger("tessera.power.agent")
TOLERANCE_WATTS = 1.0  # NVML rounds limits to the milliwatt; a limit this close is already in force


def desired_limits(budgets: Iterable[Mapping[str, Any]], node: str) -> dict[int, float]:
    """This node's caps from every PowerBudget's status.caps; the lowest wins where two budgets cap one device."""
    out: dict[int, float] = {}
    prefix = device_key(node, 0)[:-1]
    for budget in budgets:
        for cap in (budget.get("status") or {}).get("caps") or []:
            key = str(cap.get("device", ""))
            if key.startswith(prefix) and key[len(prefix):].isdigit():
                index = int(key[len(prefix):])
                out[index] = min(float(cap["watts"]), out.get(index, float("inf")))
    return out


def writes(readings: list[DeviceReading], desired: Mapping[int, float], capped: set[int]) -> list[tuple[int, float]]:
    """(device, watts) to write: the desired caps not yet in force, and defaults back on devices no longer capped."""
    out = []
    for r in readings:
        target = desired.get(r.index)
        if target is None and r.index in capped:
            target = r.default_limit_watts
        if target is not None and abs(r.limit_watts - target) > TOLERANCE_WATTS:
            out.append((r.index, target))
    return out


def node_readings(node: str, vendor: str, readings: list[DeviceReading], now: datetime) -> NodePowerReadings:
    return NodePowerReadings(node=node, vendor=vendor, time=now.isoformat(timespec="seconds"), devices=[
        DevicePower(index=r.index, uuid=r.uuid, power_watts=r.power_watts, limit_watts=r.limit_watts,
                    default_limit_watts=r.default_limit_watts, min_limit_watts=r.min_limit_watts,
                    max_limit_watts=r.max_limit_watts)
        for r in readings
    ])


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.device_watts = Gauge(*_args(catalogue.AGENT_DEVICE_WATTS), registry=registry)
        self.device_limit = Gauge(*_args(catalogue.AGENT_DEVICE_LIMIT_WATTS), registry=registry)
        self.node_watts = Gauge(*_args(catalogue.AGENT_NODE_WATTS), registry=registry)
        self.writes = Counter(*_args(catalogue.AGENT_LIMIT_WRITES), registry=registry)

    def publish(self, node: str, readings: list[DeviceReading]) -> None:
        for r in readings:
            self.device_watts.labels(node=node, device=str(r.index)).set(r.power_watts)
            self.device_limit.labels(node=node, device=str(r.index)).set(r.limit_watts)
        self.node_watts.labels(node=node).set(sum(r.power_watts for r in readings))


def _args(spec: catalogue.MetricSpec) -> tuple:
    return spec.name, spec.help, spec.labels


@dataclass
class Agent:
    """One node's agent. ``budgets`` lists the PowerBudgets (the API call); ``apply`` off: read only."""

    node: str
    reader: PowerReader
    budgets: Callable[[], list[Mapping[str, Any]]]
    apply: bool = True
    metrics: AgentMetrics = field(default_factory=lambda: AgentMetrics(CollectorRegistry()))
    capped: set[int] = field(default_factory=set)  # devices whose limit this agent set
    latest: NodePowerReadings | None = None

    def tick(self, now: datetime) -> list[tuple[int, float]]:
        """Read, publish, and bring the limits to what the budgets say; returns the writes attempted."""
        readings = self.reader.read()
        self.metrics.publish(self.node, readings)
        self.latest = node_readings(self.node, self.reader.vendor, readings, now)
        if not self.apply:
            return []
        desired = desired_limits(self.budgets(), self.node)
        todo = writes(readings, desired, self.capped)
        for index, watts in todo:
            try:
                self.reader.set_limit(index, watts)
            except LimitOutOfRange as err:
                self.metrics.writes.labels(node=self.node, outcome="refused").inc()
                log.warning("%s", err)
                continue
            except Exception as err:  # the vendor library's own errors (no permission, device lost)
                self.metrics.writes.labels(node=self.node, outcome="error").inc()
                log.error("device %d: setting %.0f W failed: %s", index, watts, err)
                continue
            self.metrics.writes.labels(node=self.node, outcome="ok").inc()
            log.info("device %d: limit %.0f W", index, watts)
            if index in desired:
                self.capped.add(index)
            else:
                self.capped.discard(index)
        return todo


def serve(agent: Agent, port: int) -> ThreadingHTTPServer:
    """/metrics (Prometheus) and /readings (NodePowerReadings JSON) on ``port``, in a thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/metrics":
                body, kind = generate_latest(agent.metrics.registry), CONTENT_TYPE_LATEST
            elif self.path == "/readings" and agent.latest is not None:
                body, kind = agent.latest.model_dump_json(by_alias=True).encode(), "application/json"
            else:
                self.send_error(404 if self.path != "/readings" else 503)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def list_budgets() -> Callable[[], list[Mapping[str, Any]]]:
    """PowerBudgets through the in-cluster API (the agent's ServiceAccount: get/list powerbudgets only)."""
    import kubernetes

    kubernetes.config.load_incluster_config()
    api = kubernetes.client.CustomObjectsApi()
    return lambda: api.list_cluster_custom_object(GROUP, VERSION, "powerbudgets", _request_timeout=5)["items"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tessera.workers.power.agent",
        description="Node power agent: export each accelerator's draw and limit, apply the caps of PowerBudgets.",
    )
    parser.add_argument("--node", default=os.environ.get("NODE_NAME"),
                        help="this node's name (default: $NODE_NAME, from the downward API)")
    parser.add_argument("--vendor", choices=sorted(READERS), default="nvidia", help="which vendor library reads the devices")
    parser.add_argument("--port", type=int, default=9400, help="port of /metrics and /readings (default 9400)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings (default 1)")
    parser.add_argument("--read-only", action="store_true", help="never write a limit (needs no privilege)")
    args = parser.parse_args(argv)
    if not args.node:
        parser.error("--node: give the node's name (or set NODE_NAME)")
    if args.interval <= 0:
        parser.error("--interval: must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    agent = Agent(args.node, open_reader(args.vendor), list_budgets() if not args.read_only else list,
                  apply=not args.read_only)
    serve(agent, args.port)
    log.info("power agent on %s: %d %s devices, port %d%s", args.node, len(agent.reader.read()), args.vendor,
             args.port, " (read only)" if args.read_only else "")
    while True:
        started = time.monotonic()
        try:
            agent.tick(datetime.now(timezone.utc))
        except Exception as err:  # an API or driver hiccup: report it and read again next time
            log.error("tick failed: %s", err)
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    raise SystemExit(main())
