"""kopf handlers: indexes of the inventory, reconciliation of AgentWorkflows, re-planning on inventory change.

Reconciliation is level-based: every path (create, update, resume, an inventory change, a RayService
that became ready or vanished) runs the same ``reconcile``, which reads the current state, computes the
desired one (``reconcile.desired_state``) and applies the difference. Create, update and resume run it
inside kopf's handlers, whose exceptions are the retry policy; the other paths queue the workflow for
``requeue_worker``, one task per operator run, which runs it the same way and retries with the same
exponential backoff.

The planner takes one workflow at a time (``PlanTurns``), best-ranked first; API calls happen outside that
turn, each with a time limit. Per-run state (settings, API client, what each plan holds, the queue) lives
in kopf's ``memo``, so two operators in one process (tests) never share it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import heapq
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Mapping

import kopf

from tessera.api import (
    API_VERSION, GROUP, VERSION, HardwareClass, ModelProfile, Phase, Plan, PowerBudget, ResourceError, parse_resource,
)
from tessera.api.common import format_watts
from tessera.api.conditions import ConditionType, Reason
from tessera.operator import kube
from tessera.operator.builders import WORKFLOW_LABEL, child_name, plan_from_child
from tessera.operator.logs import ObjectLog
from tessera.operator.inventory import (
    Holding, InvalidResource, Snapshot, first_values, planned_watts, rank, slim_node,
)
from tessera.operator.metrics import operator_metrics, serve
from tessera.operator.network import build_network_policy
from tessera.operator.reconcile import (
    NORMAL, Conditions, Memory, current_plan, desired_state, rayservice_ready, replan_reasons, same_plan,
    status_patch, workflow_key,
)
from tessera.operator.settings import OperatorSettings

WORKFLOWS = (GROUP, VERSION, "agentworkflows")
RAYSERVICES = ("ray.io", "v1", "rayservices")
INVENTORY_KINDS = {"hardwareclasses": "HardwareClass", "powerbudgets": "PowerBudget", "modelprofiles": "ModelProfile"}
DEBOUNCE_SECONDS = 0.2  # gather a burst of inventory events (a node pool scaling) into one re-planning pass
GATHER_SECONDS = 0.05  # an idle planner waits this long for the rest of a burst, then plans it in rank order
BUDGET_STATUS_SECONDS = 2.0  # PowerBudgets' plannedWatts is written at most this often
RETRY_SECONDS = 5  # the first retry of a failing reconcile; each next one waits twice as long
RECENT_RECONCILES = 10_000  # timings kept for the benchmark; the histogram has them all

_metrics_port_served: set[int] = set()  # prometheus-client serves the process-wide registry once per port


@dataclass(frozen=True)
class WorkflowEntry:
    """What the index keeps of an AgentWorkflow: enough to re-plan it and to count what it holds."""

    body: dict[str, Any]
    plan: Plan | None
    holds: bool  # its plan occupies devices (valid, feasible, neither suspended nor a dry run)
    priority: int
    created: str


class PlanTurns:
    """The planner's turn, one workflow at a time, granted best rank first.

    A burst of reconciles (the start-up listing, ``kubectl apply`` of a folder) is thereby planned in rank
    order whatever order its events arrive in, so the same inventory and workflows give the same plans.
    """

    def __init__(self) -> None:
        self._busy = False
        self._gathering = False
        self._waiting: list[tuple[Any, int, asyncio.Future]] = []
        self._tickets = itertools.count()

    @asynccontextmanager
    async def turn(self, order: Any) -> AsyncIterator[None]:
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (order, next(self._tickets), granted))
        try:
            if not self._busy and not self._gathering:
                self._gathering = True
                try:
                    await asyncio.sleep(GATHER_SECONDS)
                finally:
                    self._gathering = False
                    if not self._busy:
                        self._grant_next()
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._grant_next()  # it was our turn: pass it on
            else:
                granted.cancel()
            raise
        try:
            yield
        finally:
            self._grant_next()

    def _grant_next(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                self._busy = True
                granted.set_result(None)
                return
        self._busy = False


@dataclass
class OperatorState:
    settings: OperatorSettings
    api: kube.KubeAPI
    indexes: dict[str, Any] = field(default_factory=dict)
    holdings: dict[str, Holding] = field(default_factory=dict)  # fresher than the index: set when planned
    memories: dict[str, Memory] = field(default_factory=dict)
    inventory_marks: dict[tuple[str, str], str] = field(default_factory=dict)
    inventory_version: int = 0  # bumped on every change the planner sees (kopf updates indexes before handlers)
    cached_snapshot: tuple[int, Snapshot] | None = None
    inventory_status: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # as last seen or written
    budget_fit: dict[str, tuple[bool, str, float]] = field(default_factory=dict)  # name -> (within, message, watts)
    budgets_due: dict[str, int | None] = field(default_factory=dict)  # name -> generation: plannedWatts to write
    turns: PlanTurns = field(default_factory=PlanTurns)
    versions: dict[str, int] = field(default_factory=dict)  # workflow -> number of its newest reconcile
    failures: dict[str, int] = field(default_factory=dict)  # workflow -> reconciles failed in a row
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    queued: set[str] = field(default_factory=set)
    inventory_changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    kopf_context: contextvars.Context | None = None  # a handler's context: kopf's Event poster is reachable there
    writes: set[asyncio.Task] = field(default_factory=set)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_RECONCILES))  # seconds per reconcile
    queued_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_RECONCILES))  # waiting for a turn

    def seen_from_handler(self) -> None:
        if self.kopf_context is None:
            self.kopf_context = contextvars.copy_context()

    def enqueue(self, key: str) -> None:
        if key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)

    def later(self, key: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    def backoff(self, key: str) -> float:
        """The wait before the next retry of a workflow whose reconcile just failed: 5 s, 10 s, 20 s, ..."""
        failed = self.failures[key] = self.failures.get(key, 0) + 1
        return backoff_seconds(failed, self.settings.retry_max_seconds)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A Kubernetes API call in a thread (each has its own time limit, see ``kube.KubeAPI``)."""
        return await asyncio.to_thread(fn, *args)

    def spawn(self, what: str, job: Awaitable[Any], logger: logging.Logger) -> None:
        """Run an API write in the background (a status of an inventory object); a failure is logged."""
        async def run() -> None:
            try:
                await job
            except (kopf.TemporaryError, kopf.PermanentError) as err:
                logger.warning(f"{what}: {err}")

        task = asyncio.create_task(run())
        self.writes.add(task)
        task.add_done_callback(self.writes.discard)

    def snapshot(self) -> Snapshot:
        """The inventory as the indexes hold it, built once per inventory change (Node heartbeats are none)."""
        if self.cached_snapshot is not None and self.cached_snapshot[0] == self.inventory_version:
            return self.cached_snapshot[1]
        version = self.inventory_version
        parts: dict[str, dict[str, Any]] = {}
        invalid: dict[str, InvalidResource] = {}
        for plural in INVENTORY_KINDS:
            parts[plural] = {}
            for name, value in first_values(self.indexes[f"{plural}_index"]).items():
                if isinstance(value, InvalidResource):
                    invalid[f"{value.kind}/{name}"] = value
                else:
                    parts[plural][name] = value
        snapshot = Snapshot(classes=parts["hardwareclasses"], budgets=parts["powerbudgets"],
                            nodes=list(first_values(self.indexes["nodes_index"]).values()),
                            profiles=parts["modelprofiles"], invalid=invalid)
        self.cached_snapshot = (version, snapshot)
        return snapshot

    def workflows(self) -> dict[str, WorkflowEntry]:
        return first_values(self.indexes["workflows_index"])

    def children(self) -> dict[str, tuple[Plan, int]]:
        """Workflow -> the plan (and its generation) its RayService carries."""
        return first_values(self.indexes["rayservices_index"])

    def holdings_view(self, snapshot: Snapshot, workflows: Mapping[str, WorkflowEntry]) -> dict[str, Holding]:
        """What every existing workflow holds: as planned by this run, else as its RayService says, else as its
        status says (after a restart, the child is the surer of the two: it is written first)."""
        children = self.children()
        out = {}
        for key, entry in workflows.items():
            if key in self.holdings:
                out[key] = self.holdings[key]
            elif key in children:
                out[key] = snapshot.holding(children[key][0], entry.priority, entry.created)
            elif entry.holds:
                out[key] = snapshot.holding(entry.plan, entry.priority, entry.created)
        return out


def backoff_seconds(failures: int, most: float) -> float:
    return min(most, RETRY_SECONDS * 2 ** max(0, failures - 1))


def _state(memo: Any) -> OperatorState:
    return memo["tessera"]


def _settings(memo: Any) -> OperatorSettings:
    return memo.get("settings") or OperatorSettings.from_env()


# --- start-up, login, shut-down ---------------------------------------------------------------------------
@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **kwargs: Any) -> None:
    ops = _settings(memo)
    memo["settings"] = ops
    settings.posting.level = logging.WARNING  # Events only for what a user must act on (and our own Normal ones)
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
        from tessera.operator.webhook import AdmissionServer  # webhook.py imports this module

        settings.admission.server = AdmissionServer(
            port=ops.webhook_port, host=ops.webhook_host, certfile=ops.webhook_cert, pkeyfile=ops.webhook_key,
            insecure=ops.webhook_insecure, addr="0.0.0.0")
        settings.admission.managed = ops.webhook_managed
    config = await asyncio.to_thread(kube.configuration, ops)
    state = OperatorState(ops, kube.KubeAPI(config, ops.api_timeout_seconds))
    state.indexes = {name: kwargs[name] for name in (
        "nodes_index", "hardwareclasses_index", "powerbudgets_index", "modelprofiles_index", "workflows_index",
        "rayservices_index")}
    memo["tessera"] = state
    memo["connection"] = kube.connection_info(config)
    if ops.metrics_port and ops.metrics_port not in _metrics_port_served:
        serve(ops.metrics_port)
        _metrics_port_served.add(ops.metrics_port)
    state.tasks = [asyncio.create_task(requeue_worker(state, logger), name="tessera requeue worker"),
                   asyncio.create_task(inventory_watcher(state, logger), name="tessera inventory watcher")]
    if settings.peering.standalone:
        logger.info("standalone: no peering, this replica acts alone")
    else:
        state.tasks.append(asyncio.create_task(announce_peering(state, settings.peering, logger)))


async def announce_peering(state: OperatorState, peering: Any, logger: logging.Logger) -> None:
    """Say what the operator waits for when peering is on: kopf itself is silent while the object is missing."""
    where = f"KopfPeering {peering.name} in {', '.join(state.settings.namespaces)}" if state.settings.namespaces \
        else f"ClusterKopfPeering {peering.name}"
    try:
        exists = await state.call(state.api.peering_exists, peering.name, state.settings.namespaces[:1])
    except (kopf.TemporaryError, kopf.PermanentError) as err:
        logger.warning(f"peering: could not read {where} ({err})")
        return
    if exists:
        logger.info(f"peering through {where} at priority {peering.priority}: the live replica with the highest "
                    "priority acts, the others stand by")
    else:
        logger.warning(f"waiting for the peering object {where}: nothing is reconciled until it exists "
                       "(the chart creates it; or run with --standalone for a single replica)")


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return memo["connection"]


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    state = memo.get("tessera")
    if state is None:
        return
    for task in [*state.tasks, *state.writes]:
        task.cancel()
    await asyncio.gather(*state.tasks, *state.writes, return_exceptions=True)
    state.api.close()


# --- indexes: the inventory, the workflows and their children, complete before any handler runs -----------
def _parsed(body: Mapping[str, Any], kind: str, name: str) -> Any:
    """The model of an inventory object, or what is wrong with it (its status and the workflows' messages say it)."""
    try:
        return parse_resource({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
    except ResourceError as err:
        return InvalidResource(kind, name, "; ".join(str(p) for p in err.problems))


@kopf.index("v1", "nodes")
def nodes_index(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {name: slim_node(body)}


@kopf.index(GROUP, VERSION, "hardwareclasses")
def hardwareclasses_index(name: str, body: kopf.Body, **_: Any) -> dict[str, HardwareClass | InvalidResource]:
    return {name: _parsed(body, "HardwareClass", name)}


@kopf.index(GROUP, VERSION, "powerbudgets")
def powerbudgets_index(name: str, body: kopf.Body, **_: Any) -> dict[str, PowerBudget | InvalidResource]:
    return {name: _parsed(body, "PowerBudget", name)}


@kopf.index(GROUP, VERSION, "modelprofiles")
def modelprofiles_index(name: str, body: kopf.Body, **_: Any) -> dict[str, ModelProfile | InvalidResource]:
    return {name: _parsed(body, "ModelProfile", name)}


@kopf.index(*WORKFLOWS)
def workflows_index(namespace: str, name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status,
                    meta: kopf.Meta, **_: Any) -> dict[str, WorkflowEntry]:
    plan = current_plan(status)
    holds = bool(plan and plan.feasible and not spec.get("suspend") and not spec.get("dryRun")
                 and status.get("phase") not in (Phase.invalid.value, Phase.infeasible.value))
    priority = spec.get("priority", 0)
    return {workflow_key(namespace, name): WorkflowEntry(
        body=json.loads(json.dumps(dict(body))), plan=plan, holds=holds,
        priority=priority if isinstance(priority, int) else 0, created=str(meta.get("creationTimestamp") or ""))}


@kopf.index(*RAYSERVICES, labels={WORKFLOW_LABEL: kopf.PRESENT})
def rayservices_index(namespace: str, body: kopf.Body, **_: Any) -> dict[str, tuple[Plan, int]] | None:
    recorded = plan_from_child(body)
    if recorded is None:
        return None
    return {workflow_key(namespace, ref["name"]): recorded
            for ref in body.get("metadata", {}).get("ownerReferences", []) if ref.get("kind") == "AgentWorkflow"}


# --- the reconciliation ---------------------------------------------------------------------------------
def _order(body: Mapping[str, Any], key: str) -> tuple:
    priority = (body.get("spec") or {}).get("priority", 0)
    created = str((body.get("metadata") or {}).get("creationTimestamp") or "")
    return rank(key, Holding(priority=priority if isinstance(priority, int) else 0, created=created))


async def reconcile(body: Mapping[str, Any], state: OperatorState, logger: logging.Logger | ObjectLog) -> dict[str, Any]:
    """Bring one workflow's RayService and status to the desired state; returns the status patch to write."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = workflow_key(namespace, name)
    metrics = operator_metrics()
    started = time.perf_counter()
    outcome = "error"
    queued = 0.0
    try:
        actual_child = await state.call(state.api.get_rayservice, namespace, child_name(name))
        waiting = time.perf_counter()
        async with state.turns.turn(_order(body, key)):  # planning and recording what the plan holds
            queued = time.perf_counter() - waiting
            snapshot = state.snapshot()
            workflows = state.workflows()
            holdings = state.holdings_view(snapshot, workflows)
            # In a thread: the planner is CPU-bound, and kopf's watches must keep flowing meanwhile.
            desired = await asyncio.to_thread(desired_state, body, snapshot, holdings,
                                              state.memories.get(key, Memory()), actual_child, state.settings,
                                              time.monotonic())
            freed = _shrinks(holdings.get(key), desired.holding)
            holdings[key] = state.holdings[key] = desired.holding
            state.memories[key] = desired.memory
            for victim, why in desired.preempts.items():
                entry = workflows.get(victim)
                holdings[victim] = state.holdings[victim] = Holding(
                    priority=entry.priority if entry else 0, created=entry.created if entry else "")
                state.memories[victim] = replace(state.memories.get(victim, Memory()), preempted_by=why)
            version = state.versions[key] = state.versions.get(key, 0) + 1
            publish_budgets(state, snapshot, holdings, logger)
        for victim in desired.preempts:
            logger.info(f"preempting {victim}")
            state.enqueue(victim)
        if desired.replan_reasons:
            logger.info(f"planned ({'; '.join(desired.replan_reasons)}): {desired.outcome}")
        if desired.solve_seconds is not None:
            metrics.solved(state.settings.solver, desired.solve_seconds)
        if state.versions.get(key) == version:  # else a newer reconcile of this workflow writes the newer state
            await _apply_child(state, namespace, name, desired.rayservice, actual_child, logger)
        for type_, reason, message in desired.events:
            post_event(state, body, type_, reason, message)
            (logger.info if type_ == NORMAL else logger.warning)(message)
        if desired.requeue_after is not None:
            state.later(key, desired.requeue_after)
        if freed:
            state.inventory_changed.set()  # capacity came free: infeasible workflows may fit now
        patch = status_patch(body.get("status"), desired.status)
        outcome = desired.outcome
        old_plan = current_plan(body.get("status") or {})
        metrics.workflow_status(namespace, name, desired.status, (body.get("spec") or {}).get("slo"),
                                plan_changed=not same_plan(old_plan, current_plan(desired.status)))
        state.failures.pop(key, None)
        return patch
    finally:
        elapsed = time.perf_counter() - started
        metrics.reconciled(outcome, elapsed)
        state.latencies.append(elapsed)
        state.queued_seconds.append(queued)


async def _apply_child(state: OperatorState, namespace: str, name: str, desired: dict[str, Any] | None,
                       actual: Mapping[str, Any] | None, logger: logging.Logger | ObjectLog) -> None:
    if desired is None:
        if actual is not None:
            await state.call(state.api.delete_rayservice, namespace, child_name(name))
            logger.info(f"deleted RayService {child_name(name)}")
        return
    done = await state.call(state.api.apply_rayservice, desired, actual)
    if done != "unchanged":
        logger.info(f"{done} RayService {child_name(name)}")
    if await state.call(state.api.apply_network_policy, build_network_policy(
            desired, state.settings.serve_clients, state.settings.metrics_clients)) == "created":
        logger.info(f"created NetworkPolicy {child_name(name)}")


def post_event(state: OperatorState, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event about ``body``, through kopf's poster (Warnings also pass its posting level).

    kopf's poster is found through context variables that its handlers see but our own tasks (the requeue
    worker, the inventory watcher, started before kopf's poster) do not: those post in a handler's context.
    """
    ref = {k: body.get(k) for k in ("apiVersion", "kind", "metadata")}
    post = (functools.partial(kopf.event, ref, type=type_, reason=reason, message=message[:1024]) if type_ == NORMAL
            else functools.partial(kopf.warn, ref, reason=reason, message=message[:1024]))
    if state.kopf_context is not None:
        state.kopf_context.run(post)
    else:
        post()


def _shrinks(before: Holding | None, after: Holding) -> bool:
    if before is None:
        return False
    return any(after.devices.get(c, 0) < n for c, n in before.devices.items()) or any(
        after.watts.get(b, 0.0) < w for b, w in before.watts.items())


@kopf.on.resume(*WORKFLOWS)
@kopf.on.create(*WORKFLOWS)
@kopf.on.update(*WORKFLOWS)
async def reconcile_workflow(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, logger: logging.Logger,
                             retry: int, **_: Any) -> None:
    state = _state(memo)
    state.seen_from_handler()
    key = workflow_key(body["metadata"]["namespace"], body["metadata"]["name"])
    try:
        status = await reconcile(body, state, logger)
    except kopf.TemporaryError as err:
        raise kopf.TemporaryError(str(err), delay=backoff_seconds(retry + 1, state.settings.retry_max_seconds)) from None
    except (kopf.PermanentError, asyncio.CancelledError):
        raise
    except Exception as err:  # a bug: kopf retries, backing off, and logs the traceback
        raise kopf.TemporaryError(f"reconciliation failed: {err!r}", delay=state.backoff(key)) from err
    if status:
        patch["status"] = status


@kopf.on.event(*WORKFLOWS)
async def workflow_event(type: str, namespace: str, name: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    if type != "DELETED":
        return
    state = _state(memo)
    key = workflow_key(namespace, name)
    for per_workflow in (state.memories, state.versions, state.failures):
        per_workflow.pop(key, None)
    released = state.holdings.pop(key, Holding())
    if not released.empty:
        state.inventory_changed.set()
    operator_metrics().workflow_gone(namespace, name)
    snapshot = state.snapshot()
    holdings = state.holdings_view(snapshot, {k: v for k, v in state.workflows().items() if k != key})
    publish_budgets(state, snapshot, holdings, logger)


# --- the inventory's status: Valid on every object, WithinBudget and plannedWatts on PowerBudgets ---------
def publish_budgets(state: OperatorState, snapshot: Snapshot, holdings: Mapping[str, Holding],
                    logger: logging.Logger) -> None:
    """The planned watts per PowerBudget: to the metrics, and to each budget's status when its fit changes."""
    planned = planned_watts(holdings.values())
    operator_metrics().budgets({n: b.spec.provisioned_watts for n, b in snapshot.budgets.items()}, planned)
    for name, budget in snapshot.budgets.items():
        watts, limit = planned.get(name, 0.0), budget.spec.expected_limit_watts()
        within = watts <= limit + 1e-6
        message = (f"the plans expect {format_watts(watts)} of the {format_watts(limit)} allowed" if within else
                   f"the plans expect {format_watts(watts)}, over the {format_watts(limit)} allowed by "
                   f"{format_watts(watts - limit)}: workflows over it are re-planned after "
                   f"{state.settings.power_budget_grace_seconds:g} s")
        fit = (within, message, round(watts, 1))
        before = state.budget_fit.get(name)
        if before == fit:
            continue
        state.budget_fit[name] = fit
        if not within and (before is None or before[0]):
            body = {"apiVersion": API_VERSION, "kind": "PowerBudget",
                    "metadata": budget.metadata.model_dump(by_alias=True, exclude_none=True)}
            post_event(state, body, "Warning", Reason.over_budget, f"PowerBudget {name}: {message}")
            logger.warning(f"PowerBudget {name}: {message}")
        if before is None or before[0] != within:  # a change of WithinBudget is written at once
            write_inventory_status(state, "powerbudgets", name, budget.metadata.generation, None, logger)
        else:  # plannedWatts moves with every plan: written at most every BUDGET_STATUS_SECONDS
            state.budgets_due[name] = budget.metadata.generation
            if len(state.budgets_due) == 1:
                asyncio.get_running_loop().call_later(BUDGET_STATUS_SECONDS, _write_due_budgets, state, logger)


def _write_due_budgets(state: OperatorState, logger: logging.Logger) -> None:
    due, state.budgets_due = state.budgets_due, {}
    for name, generation in due.items():
        if name in state.budget_fit:
            write_inventory_status(state, "powerbudgets", name, generation, None, logger)


def write_inventory_status(state: OperatorState, plural: str, name: str, generation: int | None,
                          problem: str | None, logger: logging.Logger) -> None:
    """Write the object's conditions when they differ from what it shows (a status write of our own comes
    back as an event that then changes nothing)."""
    key = (plural, name)
    seen = state.inventory_status.get(key, {})
    conditions = Conditions(seen.get("conditions"), generation)
    conditions.set(ConditionType.valid, problem is None, Reason.valid if problem is None else Reason.invalid_spec,
                   problem or "the planner uses it")
    status: dict[str, Any] = {"observedGeneration": generation}
    fit = state.budget_fit.get(name) if plural == "powerbudgets" and problem is None else None
    if fit is not None:
        within, message, watts = fit
        conditions.set(ConditionType.within_budget, within, Reason.within_budget if within else Reason.over_budget,
                       message)
        status["plannedWatts"] = watts
    status["conditions"] = conditions.wire()
    if status_patch(seen, status):
        state.inventory_status[key] = {**seen, **status}
        state.spawn(f"writing the status of {INVENTORY_KINDS[plural]} {name}",
                    state.call(state.api.patch_cluster_status, plural, name, status), logger)


# --- inventory changes and children: queue the affected workflows -------------------------------------------
@kopf.on.event("v1", "nodes")
@kopf.on.event(GROUP, VERSION, "hardwareclasses")
@kopf.on.event(GROUP, VERSION, "powerbudgets")
@kopf.on.event(GROUP, VERSION, "modelprofiles")
async def inventory_event(type: str | None, resource: kopf.Resource, name: str, body: kopf.Body, memo: kopf.Memo,
                    logger: logging.Logger, **_: Any) -> None:
    state = _state(memo)
    state.seen_from_handler()
    key = (resource.plural, name)
    if type == "DELETED":
        mark = None
        state.inventory_status.pop(key, None)
        state.budget_fit.pop(name, None) if resource.plural == "powerbudgets" else None
    else:
        relevant = slim_node(body) if resource.plural == "nodes" else dict(body.get("spec") or {})
        mark = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
        if resource.plural in INVENTORY_KINDS:
            state.inventory_status[key] = json.loads(json.dumps(dict(body.get("status") or {})))
            parsed = _parsed(body, INVENTORY_KINDS[resource.plural], name)
            problem = parsed.problem if isinstance(parsed, InvalidResource) else None
            if problem and state.inventory_marks.get(key) != mark:
                logger.warning(f"{parsed.describe()}; the planner leaves it out until it is fixed")
            write_inventory_status(state, resource.plural, name, body.get("metadata", {}).get("generation"),
                                   problem, logger)
    if state.inventory_marks.get(key) == mark:
        return  # a heartbeat or a status update: nothing the planner reads
    state.inventory_version += 1
    initial = type is None and key not in state.inventory_marks  # the first listing: resume handlers cover it
    if mark is None:
        state.inventory_marks.pop(key, None)
    else:
        state.inventory_marks[key] = mark
    if not initial:
        state.inventory_changed.set()


@kopf.on.event(*RAYSERVICES, labels={WORKFLOW_LABEL: kopf.PRESENT})
async def rayservice_event(type: str | None, body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
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
        if (conditions.get(ConditionType.ready) == "True") != ready_now or (type == "DELETED" and expected):
            state.enqueue(key)


async def inventory_watcher(state: OperatorState, logger: logging.Logger) -> None:
    """After an inventory change, queue (in rank order) the workflows whose plan must be made again."""
    while True:
        await state.inventory_changed.wait()
        await asyncio.sleep(DEBOUNCE_SECONDS)
        state.inventory_changed.clear()
        try:
            queue_affected(state, logger)
        except Exception:  # a bug must not stop re-planning for good
            logger.exception("re-planning after an inventory change failed; trying again at the next change")


def queue_affected(state: OperatorState, logger: logging.Logger) -> None:
    """Queue, best rank first, the workflows whose plan must be made again; publish the budgets' planned watts."""
    snapshot = state.snapshot()
    workflows = state.workflows()
    children = state.children()
    holdings = state.holdings_view(snapshot, workflows)
    affected = [key for key, entry in workflows.items()
                if replan_reasons(entry.body, snapshot, holdings, state.memories.get(key, Memory()),
                                  children.get(key))]
    publish_budgets(state, snapshot, holdings, logger)
    affected.sort(key=lambda k: rank(k, holdings.get(k) or Holding(
        priority=workflows[k].priority, created=workflows[k].created)))
    if affected:
        logger.info(f"inventory changed: re-planning {len(affected)} workflow(s)")
    for key in affected:
        state.enqueue(key)


async def requeue_worker(state: OperatorState, logger: logging.Logger) -> None:
    """Reconcile queued workflows one by one; a failing one is retried with exponential backoff."""
    while True:
        key = await state.queue.get()
        state.queued.discard(key)
        namespace, name = key.split("/", 1)
        try:
            body = await state.call(state.api.get_workflow, namespace, name)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                continue
            patch = await reconcile(body, state, ObjectLog(logger, {"object": key}))
            if patch:
                await state.call(state.api.patch_workflow_status, namespace, name, patch)
        except kopf.TemporaryError as err:
            delay = state.backoff(key)
            logger.warning(f"{key}: {err}; retrying in {delay:g} s")
            state.later(key, delay)
        except kopf.PermanentError as err:
            logger.error(f"{key}: {err}")
        except Exception:  # a bug must not stop the worker for every other workflow
            delay = state.backoff(key)
            logger.exception(f"{key}: reconciliation failed; retrying in {delay:g} s")
            state.later(key, delay)
