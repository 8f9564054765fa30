"""kopf handlers: indexes of the inventory, reconciliation of AgentWorkflows, re-planning on inventory change.

Reconciliation is level-based: every path (create, update, resume, an inventory change, a RayService
that became ready or vanished) runs the same ``reconcile``, which reads the current state, computes the
desired one (``reconcile.desired_state``) and applies the difference. Create, update and resume run it
inside kopf's handlers, whose exceptions are the retry policy; the other paths queue the workflow for
``requeue_worker``, one task per operator run, which runs it the same way and retries the same way.

Per-run state (settings, API client, what each plan holds, the queue) lives in kopf's ``memo``, so two
operators in one process (tests) never share it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import kopf

from tessera.api import HardwareClass, ModelProfile, Plan, PowerBudget, ResourceError, parse_resource
from tessera.operator import kube
from tessera.operator.builders import WORKFLOW_LABEL, child_name
from tessera.operator.inventory import Holding, Snapshot, first_values, rank, slim_node
from tessera.operator.metrics import operator_metrics, serve
from tessera.operator.reconcile import (
    current_plan, desired_state, rayservice_ready, replan_reasons, same_plan, status_patch, workflow_key,
)
from tessera.operator.settings import OperatorSettings

GROUP, VERSION = "tessera.dev", "v1alpha1"
WORKFLOWS = (GROUP, VERSION, "agentworkflows")
INVENTORY_RESOURCES = (("v1", "nodes"), (GROUP, VERSION, "hardwareclasses"), (GROUP, VERSION, "powerbudgets"),
                       (GROUP, VERSION, "modelprofiles"))
DEBOUNCE_SECONDS = 0.2  # gather a burst of inventory events (a node pool scaling) into one re-planning pass
RETRY_SECONDS = 5

_metrics_port_served: set[int] = set()  # prometheus-client serves the process-wide registry once per port


@dataclass(frozen=True)
class WorkflowEntry:
    """What the index keeps of an AgentWorkflow: enough to re-plan it and to count what it holds."""

    body: dict[str, Any]
    plan: Plan | None
    holds: bool  # its plan occupies devices (valid, feasible, neither suspended nor a dry run)
    priority: int
    created: str


@dataclass
class OperatorState:
    settings: OperatorSettings
    api: kube.KubeAPI
    indexes: dict[str, Any] = field(default_factory=dict)
    holdings: dict[str, Holding] = field(default_factory=dict)  # fresher than the index: set when planned
    fingerprints: dict[str, str] = field(default_factory=dict)
    inventory_marks: dict[tuple[str, str], str] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    plan_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    queued: set[str] = field(default_factory=set)
    inventory_changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds per reconcile, for the benchmark
    queued_seconds: list[float] = field(default_factory=list)  # of which waiting for the planner's turn

    def lock(self, key: str) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def enqueue(self, key: str) -> None:
        if key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            classes=first_values(self.indexes["hardwareclasses_index"]),
            nodes=list(first_values(self.indexes["nodes_index"]).values()),
            budgets=first_values(self.indexes["powerbudgets_index"]),
            profiles=first_values(self.indexes["modelprofiles_index"]),
        )

    def workflows(self) -> dict[str, WorkflowEntry]:
        return first_values(self.indexes["workflows_index"])

    def holdings_view(self, snapshot: Snapshot, workflows: Mapping[str, WorkflowEntry]) -> dict[str, Holding]:
        """What every existing workflow holds: as planned by this run, else as its status says (after a restart)."""
        out = {}
        for key, entry in workflows.items():
            if key in self.holdings:
                out[key] = self.holdings[key]
            elif entry.holds:
                out[key] = snapshot.holding(entry.plan, entry.priority, entry.created)
        return out


def _state(memo: Any) -> OperatorState:
    return memo["tessera"]


def _settings(memo: Any) -> OperatorSettings:
    return memo.get("settings") or OperatorSettings.from_env()


# --- start-up, login, shut-down ---------------------------------------------------------------------------
@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **kwargs: Any) -> None:
    ops = _settings(memo)
    memo["settings"] = ops
    settings.posting.level = logging.WARNING  # Events only for what a user must act on
    settings.persistence.finalizer = "tessera.dev/operator"
    # kopf's --standalone, or ours; otherwise peering is required: no replica acts before it knows the others.
    settings.peering.standalone = settings.peering.standalone or ops.standalone or ops.dev
    settings.peering.mandatory = not settings.peering.standalone
    if settings.peering.name == "default":
        settings.peering.name = ops.peering_name
    if settings.peering.priority == 0:
        settings.peering.priority = ops.peering_priority
    settings.watching.server_timeout = 300
    if ops.webhook_port:
        settings.admission.server = kopf.WebhookServer(
            port=ops.webhook_port, host=ops.webhook_host, certfile=ops.webhook_cert, pkeyfile=ops.webhook_key,
            insecure=ops.webhook_insecure, addr="0.0.0.0")
        settings.admission.managed = ops.webhook_managed
    config = await asyncio.to_thread(kube.configuration, ops)
    state = OperatorState(ops, kube.KubeAPI(config))
    state.indexes = {name: kwargs[name] for name in (
        "nodes_index", "hardwareclasses_index", "powerbudgets_index", "modelprofiles_index", "workflows_index")}
    memo["tessera"] = state
    memo["connection"] = kube.connection_info(config)
    if ops.metrics_port and ops.metrics_port not in _metrics_port_served:
        serve(ops.metrics_port)
        _metrics_port_served.add(ops.metrics_port)
    state.tasks = [asyncio.create_task(requeue_worker(state, logger), name="tessera requeue worker"),
                   asyncio.create_task(inventory_watcher(state, logger), name="tessera inventory watcher")]


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return memo["connection"]


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    state = memo.get("tessera")
    if state is None:
        return
    for task in state.tasks:
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    state.api.close()


# --- indexes: the inventory and the workflows, complete before any handler runs ----------------------------
def _parsed(body: Mapping[str, Any], logger: logging.Logger) -> Any:
    try:
        return parse_resource({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
    except ResourceError as err:
        logger.warning(f"ignored until fixed: {err}")
        return None


@kopf.index("v1", "nodes")
def nodes_index(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: slim_node(body)}


@kopf.index(GROUP, VERSION, "hardwareclasses")
def hardwareclasses_index(name: str, body: kopf.Body, logger: logging.Logger, **_: Any) -> dict[str, HardwareClass] | None:
    model = _parsed(body, logger)
    return {name: model} if model is not None else None


@kopf.index(GROUP, VERSION, "powerbudgets")
def powerbudgets_index(name: str, body: kopf.Body, logger: logging.Logger, **_: Any) -> dict[str, PowerBudget] | None:
    model = _parsed(body, logger)
    return {name: model} if model is not None else None


@kopf.index(GROUP, VERSION, "modelprofiles")
def modelprofiles_index(name: str, body: kopf.Body, logger: logging.Logger, **_: Any) -> dict[str, ModelProfile] | None:
    model = _parsed(body, logger)
    return {name: model} if model is not None else None


@kopf.index(*WORKFLOWS)
def workflows_index(namespace: str, name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                    meta: kopf.Meta, **_: Any) -> dict[str, WorkflowEntry]:
    plan = current_plan(status)
    holds = bool(plan and plan.feasible and not spec.get("suspend") and not spec.get("dryRun")
                 and status.get("phase") not in ("Invalid", "Infeasible"))
    priority = spec.get("priority", 0)
    return {workflow_key(namespace, name): WorkflowEntry(
        body=json.loads(json.dumps(dict(body))), plan=plan, holds=holds,
        priority=priority if isinstance(priority, int) else 0, created=str(meta.get("creationTimestamp") or ""))}


# --- the reconciliation ---------------------------------------------------------------------------------
async def reconcile(body: Mapping[str, Any], state: OperatorState, logger: logging.Logger) -> dict[str, Any]:
    """Bring one workflow's RayService and status to the desired state; returns the status patch to write."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = workflow_key(namespace, name)
    metrics = operator_metrics()
    async with state.lock(key):
        started = time.perf_counter()
        outcome = "error"
        queued = 0.0
        try:
            actual_child = await asyncio.to_thread(state.api.get_rayservice, namespace, child_name(name))
            waiting = time.perf_counter()
            async with state.plan_lock:  # planning and recording what the plan holds, one workflow at a time
                queued = time.perf_counter() - waiting
                snapshot = state.snapshot()
                holdings = state.holdings_view(snapshot, state.workflows())
                # In a thread: the planner is CPU-bound, and kopf's watches must keep flowing meanwhile.
                desired = await asyncio.to_thread(desired_state, body, snapshot, holdings, state.fingerprints.get(key),
                                                  actual_child, state.settings)
                freed = _shrinks(holdings.get(key), desired.holding)
                state.holdings[key] = desired.holding
                if desired.fingerprint:
                    state.fingerprints[key] = desired.fingerprint
                planned_watts: dict[str, float] = {}
                for holding in {**holdings, key: desired.holding}.values():
                    for budget, watts in holding.watts.items():
                        planned_watts[budget] = planned_watts.get(budget, 0.0) + watts
                metrics.budgets({n: b.spec.provisioned_watts for n, b in snapshot.budgets.items()}, planned_watts)
            if desired.replan_reasons:
                logger.info(f"planned ({'; '.join(desired.replan_reasons)}): {desired.outcome}")
            if desired.solve_seconds is not None:
                metrics.solved(state.settings.solver, desired.solve_seconds)
            if desired.rayservice is None:
                if actual_child is not None:
                    await asyncio.to_thread(state.api.delete_rayservice, namespace, child_name(name))
                    logger.info(f"deleted RayService {child_name(name)}")
            else:
                done = await asyncio.to_thread(state.api.apply_rayservice, desired.rayservice, actual_child)
                if done != "unchanged":
                    logger.info(f"{done} RayService {child_name(name)}")
            if desired.warning:
                reason, message = desired.warning
                await asyncio.to_thread(state.api.post_event, body, "Warning", reason, message)
                logger.warning(message)
            if freed:
                state.inventory_changed.set()  # capacity came free: infeasible workflows may fit now
            patch = status_patch(body.get("status"), desired.status)
            outcome = desired.outcome
            old_plan = current_plan(body.get("status") or {})
            metrics.workflow_status(namespace, name, desired.status, (body.get("spec") or {}).get("slo"),
                                    plan_changed=not same_plan(old_plan, current_plan(desired.status)))
            return patch
        finally:
            elapsed = time.perf_counter() - started
            metrics.reconciled(outcome, elapsed)
            state.latencies.append(elapsed)
            state.queued_seconds.append(queued)


def _shrinks(before: Holding | None, after: Holding) -> bool:
    if before is None:
        return False
    return any(after.devices.get(c, 0) < n for c, n in before.devices.items()) or any(
        after.watts.get(b, 0.0) < w for b, w in before.watts.items())


@kopf.on.resume(*WORKFLOWS)
@kopf.on.create(*WORKFLOWS)
@kopf.on.update(*WORKFLOWS)
async def reconcile_workflow(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, logger: logging.Logger,
                             **_: Any) -> None:
    status = await reconcile(body, _state(memo), logger)
    if status:
        patch["status"] = status


@kopf.on.event(*WORKFLOWS)
def workflow_event(type: str, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    if type != "DELETED":
        return
    state = _state(memo)
    key = workflow_key(namespace, name)
    state.fingerprints.pop(key, None)
    state.locks.pop(key, None)
    if state.holdings.pop(key, Holding()).devices:
        state.inventory_changed.set()
    operator_metrics().workflow_gone(namespace, name)


# --- inventory changes and children: queue the affected workflows -------------------------------------------
@kopf.on.event("v1", "nodes")
@kopf.on.event(GROUP, VERSION, "hardwareclasses")
@kopf.on.event(GROUP, VERSION, "powerbudgets")
@kopf.on.event(GROUP, VERSION, "modelprofiles")
def inventory_event(type: str | None, resource: kopf.Resource, name: str, body: kopf.Body, memo: kopf.Memo,
                    **_: Any) -> None:
    state = _state(memo)
    key = (resource.plural, name)
    if type == "DELETED":
        mark = None
    else:
        relevant = slim_node(body) if resource.plural == "nodes" else dict(body.get("spec") or {})
        mark = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
    if state.inventory_marks.get(key) == mark:
        return  # a heartbeat or a status update: nothing the planner reads
    initial = type is None and key not in state.inventory_marks  # the first listing: resume handlers cover it
    if mark is None:
        state.inventory_marks.pop(key, None)
    else:
        state.inventory_marks[key] = mark
    if not initial:
        state.inventory_changed.set()


@kopf.on.event("ray.io", "v1", "rayservices", labels={WORKFLOW_LABEL: kopf.PRESENT})
def rayservice_event(type: str | None, body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A child became ready, stopped being ready or vanished: let its workflow's status follow."""
    state = _state(memo)
    owners = [ref for ref in body.get("metadata", {}).get("ownerReferences", []) if ref.get("kind") == "AgentWorkflow"]
    for owner in owners:
        key = workflow_key(namespace, owner["name"])
        entry = state.workflows().get(key)
        if entry is None:
            continue
        conditions = {c.get("type"): c.get("status") for c in entry.body.get("status", {}).get("conditions", [])}
        ready_now = type != "DELETED" and rayservice_ready(body)
        expected = entry.holds and not entry.body.get("spec", {}).get("suspend")
        if (conditions.get("Ready") == "True") != ready_now or (type == "DELETED" and expected):
            state.enqueue(key)


async def inventory_watcher(state: OperatorState, logger: logging.Logger) -> None:
    """After an inventory change, queue (in rank order) the workflows whose plan must be made again."""
    while True:
        await state.inventory_changed.wait()
        await asyncio.sleep(DEBOUNCE_SECONDS)
        state.inventory_changed.clear()
        async with state.plan_lock:
            snapshot = state.snapshot()
            workflows = state.workflows()
            holdings = state.holdings_view(snapshot, workflows)
            affected = [key for key, entry in workflows.items()
                        if replan_reasons(entry.body, snapshot, holdings, state.fingerprints.get(key))]
        affected.sort(key=lambda k: rank(k, holdings.get(k) or Holding(
            priority=workflows[k].priority, created=workflows[k].created)))
        if affected:
            logger.info(f"inventory changed: re-planning {len(affected)} workflow(s)")
        for key in affected:
            state.enqueue(key)


async def requeue_worker(state: OperatorState, logger: logging.Logger) -> None:
    """Reconcile queued workflows one by one, with the handlers' retry policy."""
    while True:
        key = await state.queue.get()
        state.queued.discard(key)
        namespace, name = key.split("/", 1)
        try:
            body = await asyncio.to_thread(state.api.get_workflow, namespace, name)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                continue
            patch = await reconcile(body, state, logger)
            if patch:
                await asyncio.to_thread(state.api.patch_workflow_status, namespace, name, patch)
        except kopf.TemporaryError as err:
            logger.warning(f"{key}: {err}; retrying in {err.delay or RETRY_SECONDS:g} s")
            _later(state, key, err.delay or RETRY_SECONDS)
        except kopf.PermanentError as err:
            logger.error(f"{key}: {err}")
        except Exception:  # a bug must not stop the worker for every other workflow
            logger.exception(f"{key}: reconciliation failed; retrying in {RETRY_SECONDS} s")
            _later(state, key, RETRY_SECONDS)


def _later(state: OperatorState, key: str, delay: float) -> None:
    asyncio.get_running_loop().call_later(delay, state.enqueue, key)
