"""The power controller: POLCA capping of every PowerBudget's group, from the node agents' live readings.

Once per ``TICK_SECONDS`` per PowerBudget (a kopf timer), it reads the agents of the group's nodes
(their /readings), sums the draw, and runs the shared controller (``tessera.planner.capping``, the
code the simulator runs). Which device serves which workflow comes from the RayService worker pods
the operator created (label ``tessera.dev/workflow``; the workflow's spec.priority): a device takes
the highest priority of the workflows with pods on its node. The caps in force go into the budget's
status (``caps``: a list of node/index and watts), which the agents apply; so the operator writes
nothing but the status it already owns, and the agents read nothing but PowerBudgets
(docs/power.md). Caps, lifts and the draw become metrics and Events. An agent that does not answer
leaves its devices out of that tick's draw, so such a tick may raise a cap but never lifts one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import httpx
import kopf
from pydantic import ValidationError

from tessera.api import GROUP, VERSION, HardwareClass, PowerBudget
from tessera.api.power import NodePowerReadings, device_key
from tessera.operator.builders import WORKFLOW_LABEL
from tessera.operator.metrics import operator_metrics
from tessera.operator.reconcile import workflow_key
from tessera.planner.capping import Cap, Controller, Device, Level, Thresholds

TICK_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 0.5
AGENT_LABEL = {"app.kubernetes.io/component": "power-agent"}
AGENT_PORT_NAME = "readings"
STATUS_DRAW_STEP = 0.02  # of provisioned watts: smaller moves of the draw go to the metrics, not the status


# --- pure: who is in the group, what it draws, what to write ---------------------------------------


def in_group(labels: Mapping[str, str], budget: PowerBudget, classes: Mapping[str, HardwareClass]) -> bool:
    """Whether a node with ``labels`` draws from ``budget``: its nodeSelector, and one of its classes (any if none)."""
    if any(labels.get(k) != v for k, v in budget.spec.node_selector.items()):
        return False
    if not budget.spec.hardware_classes:
        return True
    return any(all(labels.get(k) == v for k, v in classes[c].selector().items())
               for c in budget.spec.hardware_classes if c in classes)


def node_priorities(pods: Iterable[tuple[str, str, str]], priorities: Mapping[str, int]) -> dict[str, int]:
    """The highest workflow priority per node, from (node, namespace, workflow) of the worker pods."""
    out: dict[str, int] = {}
    for node, namespace, workflow in pods:
        priority = priorities.get(workflow_key(namespace, workflow))
        if priority is not None:
            out[node] = max(priority, out.get(node, priority))
    return out


def group_devices(readings: Iterable[NodePowerReadings], by_node: Mapping[str, int]) -> tuple[list[Device], float]:
    """The group's devices as the controller sees them (TDP: the default limit) and the group's draw."""
    devices, draw = [], 0.0
    for node in readings:
        for d in node.devices:
            devices.append(Device(device_key(node.node, d.index), d.default_limit_watts, by_node.get(node.node)))
            draw += d.power_watts
    return devices, draw


@dataclass
class GroupState:
    """One budget's controller and what it last published."""

    controller: Controller
    over_since: float | None = None  # when the draw last went over provisioned watts (None: within)
    last_over: str | None = None


def step(state: GroupState, now: float, draw: float, devices: list[Device]) -> tuple[bool, list[Cap]]:
    """One tick: account the draw, decide if a decision is due; returns (level changed, caps in force)."""
    controller = state.controller
    if draw > controller.thresholds.provisioned_watts:
        state.over_since = now if state.over_since is None else state.over_since
        state.last_over = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
    else:
        state.over_since = None
    controller.observe(now, draw)
    changed = controller.due(now) and controller.decide(now, draw)
    return changed, controller.caps(devices)


def may_act(state: GroupState, draw: float, complete: bool) -> bool:
    """Whether to run the controller on this tick's draw: a silent agent's devices still draw, so a partial
    reading may raise the cap level but never lower it."""
    return complete or state.controller.wanted(draw) >= state.controller.level


def status_patch(state: GroupState, draw: float, caps: list[Cap]) -> dict[str, Any]:
    return {
        "drawWatts": round(draw, 1), "capLevel": state.controller.level.name.lower(),
        "caps": [{"device": c.device, "watts": round(c.watts, 1)} for c in caps], "lastOverBudgetTime": state.last_over,
    }


def status_changed(current: Mapping[str, Any], desired: Mapping[str, Any], provisioned: float) -> bool:
    """Whether the status is worth a write: caps, level or last excursion changed, or the draw moved by a step."""
    if any(current.get(k) != desired[k] for k in desired if k != "drawWatts"):
        return True
    return current.get("drawWatts") is None or abs(current["drawWatts"] - desired["drawWatts"]) > STATUS_DRAW_STEP * provisioned


def event_message(level: Level, draw: float, budget: PowerBudget, caps: list[Cap]) -> str:
    p = budget.spec.capping
    line = {Level.NONE: "caps lifted", Level.LOW: f"above T1 ({p.threshold_t1_percent:g} %): least urgent devices capped",
            Level.ALL: f"above T2 ({p.threshold_t2_percent:g} %): every device capped"}[level]
    shown = ", ".join(f"{c.device} {c.watts:.0f} W" for c in caps[:8]) + (" ..." if len(caps) > 8 else "")
    return f"{line}; draw {draw:.0f} W of {budget.spec.provisioned_watts:.0f} W provisioned" + (
        f"; caps: {shown}" if caps else "")


# --- kopf: indexes, the timer ---------------------------------------------------------------------


@kopf.index("v1", "pods", labels={WORKFLOW_LABEL: kopf.PRESENT})
def worker_pods_index(namespace: str, labels: kopf.Labels, spec: kopf.Spec, **_: Any) -> dict[str, tuple[str, str]] | None:
    node = spec.get("nodeName")
    return {node: (namespace, labels[WORKFLOW_LABEL])} if node else None


@kopf.index("v1", "pods", labels=AGENT_LABEL)
def power_agents_index(spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, str] | None:
    """Node -> the agent's /readings URL, once the agent pod has an IP."""
    node, ip = spec.get("nodeName"), status.get("podIP")
    ports = [p.get("containerPort") for c in spec.get("containers", []) for p in c.get("ports", [])
             if p.get("name") == AGENT_PORT_NAME]
    return {node: f"http://{ip}:{ports[0]}/readings"} if node and ip and ports else None


async def read_agents(urls: Mapping[str, str], logger: Any) -> list[NodePowerReadings]:
    """Every agent's readings, concurrently; an agent that does not answer in time is left out (and logged)."""
    async with httpx.AsyncClient(timeout=READ_TIMEOUT_SECONDS) as client:
        async def one(node: str, url: str) -> NodePowerReadings | None:
            try:
                response = await client.get(url)
                response.raise_for_status()
                return NodePowerReadings.model_validate_json(response.content)
            except (httpx.HTTPError, ValidationError) as err:
                logger.warning(f"power agent on {node}: no readings ({err})")
                return None

        found = await asyncio.gather(*(one(n, u) for n, u in urls.items()))
    return [r for r in found if r is not None]


@kopf.timer(GROUP, VERSION, "powerbudgets", interval=TICK_SECONDS, idle=None)
async def control_power(name: str, body: kopf.Body, memo: kopf.Memo, logger: Any, patch: kopf.Patch,
                        nodes_index: kopf.Index, hardwareclasses_index: kopf.Index, workflows_index: kopf.Index,
                        worker_pods_index: kopf.Index, power_agents_index: kopf.Index, **_: Any) -> None:
    try:
        budget = PowerBudget.model_validate(dict(body))
    except ValidationError:
        return  # the inventory handlers give it an invalid condition; nothing to control
    classes = {n: hc for n, (hc, *_) in hardwareclasses_index.items() if isinstance(hc, HardwareClass)}
    members = {n for n, (node, *_) in nodes_index.items()
               if in_group((node.get("metadata") or {}).get("labels") or {}, budget, classes)}
    urls = {n: url for n, (url, *_) in power_agents_index.items() if n in members}
    if not urls:
        return
    readings = await read_agents(urls, logger)
    priorities = {key: entry.priority for key, (entry, *_) in workflows_index.items()}
    pods = [(node, ns, wf) for node, entries in worker_pods_index.items() for ns, wf in entries]
    devices, draw = group_devices(readings, node_priorities(pods, priorities))
    groups: dict[str, GroupState] = memo.setdefault("power_groups", {})
    thresholds = Thresholds.from_policy(budget.spec.provisioned_watts, budget.spec.capping)
    state = groups.get(name)
    if state is None or state.controller.thresholds != thresholds:
        state = groups[name] = GroupState(Controller(thresholds))
    if not may_act(state, draw, complete=len(readings) == len(urls)):
        return
    before = state.controller.level
    changed, caps = step(state, time.time(), draw, devices)
    metrics = operator_metrics()
    metrics.power_group(name, budget.spec.expected_limit_watts(), budget.spec.capping.max_over_budget_seconds, draw,
                        state.controller.level, len(caps), _over_seconds(state))
    if changed:
        metrics.power_cap_changed(name, "cap" if state.controller.level > before else "lift")
        message = event_message(state.controller.level, draw, budget, caps)
        if state.controller.level == Level.ALL:
            kopf.warn(body, reason="PowerCapped", message=message)
        else:
            kopf.event(body, type="Normal", reason="PowerCapped" if caps else "PowerUncapped", message=message)
    desired = status_patch(state, draw, caps)
    current = {k: (body.get("status") or {}).get(k) for k in desired}
    if status_changed(current, desired, budget.spec.provisioned_watts):
        patch.status.update(desired)


def _over_seconds(state: GroupState) -> float:
    return 0.0 if state.over_since is None else max(0.0, time.time() - state.over_since)


@kopf.on.delete(GROUP, VERSION, "powerbudgets", optional=True)
def forget_power_group(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.get("power_groups", {}).pop(name, None)
    operator_metrics().power_group_gone(name)
