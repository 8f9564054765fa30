"""The one list of Tessera's Prometheus metrics.

The operator and the workers create their prometheus-client objects from these
specs; the Helm chart's dashboards and alert rules may only use names listed here
(a test checks it). Pure data: this module imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MetricType = Literal["counter", "gauge", "histogram"]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
FAST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exposed, without the _total/_bucket suffixes prometheus-client adds
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = field(default=())


# --- operator --------------------------------------------------------------------------
OPERATOR_RECONCILES = MetricSpec(
    "tessera_operator_reconciles", "counter", "AgentWorkflow reconciliations by outcome.", ("outcome",)
)
OPERATOR_RECONCILE_SECONDS = MetricSpec(
    "tessera_operator_reconcile_duration_seconds", "histogram", "Time to reconcile one AgentWorkflow.",
    ("outcome",), FAST_BUCKETS_S,
)
OPERATOR_WORKFLOWS = MetricSpec(
    "tessera_operator_workflows", "gauge", "AgentWorkflows by phase.", ("phase",)
)
OPERATOR_PLANNED_USD_PER_HOUR = MetricSpec(
    "tessera_workflow_planned_usd_per_hour", "gauge", "Planned cost of a workflow in USD per hour.",
    ("namespace", "workflow"),
)
OPERATOR_PLANNED_WATTS = MetricSpec(
    "tessera_workflow_planned_watts", "gauge", "Planned expected power draw of a workflow in watts.",
    ("namespace", "workflow"),
)
OPERATOR_PLANNED_LATENCY_SECONDS = MetricSpec(
    "tessera_workflow_planned_latency_seconds", "gauge",
    "Predicted end-to-end latency of a workflow at its SLO percentile.", ("namespace", "workflow"),
)
OPERATOR_SLO_TARGET_SECONDS = MetricSpec(
    "tessera_workflow_slo_target_seconds", "gauge", "End-to-end latency target of a workflow.",
    ("namespace", "workflow"),
)
OPERATOR_SLO_OBJECTIVE = MetricSpec(
    "tessera_workflow_slo_objective", "gauge",
    "Fraction of requests that must meet the latency target (the SLO percentile / 100).", ("namespace", "workflow"),
)
OPERATOR_PLAN_CHANGES = MetricSpec(
    "tessera_workflow_plan_changes", "counter", "Times a workflow's plan changed.", ("namespace", "workflow"),
)
OPERATOR_PLAN_SOLVE_SECONDS = MetricSpec(
    "tessera_planner_solve_duration_seconds", "histogram", "Planner solve time.", ("solver",), FAST_BUCKETS_S,
)
POWER_BUDGET_PROVISIONED_WATTS = MetricSpec(
    "tessera_power_budget_provisioned_watts", "gauge", "Provisioned watts of a PowerBudget.", ("budget",)
)
POWER_BUDGET_PLANNED_WATTS = MetricSpec(
    "tessera_power_budget_planned_watts", "gauge", "Planned expected draw inside a PowerBudget.", ("budget",)
)
POWER_BUDGET_OVERSUBSCRIBED_WATTS = MetricSpec(
    "tessera_power_budget_oversubscribed_watts", "gauge",
    "What a PowerBudget lets plans expect: provisioned x (1 + oversubscriptionPercent/100).", ("budget",)
)
POWER_BUDGET_MAX_OVER_SECONDS = MetricSpec(
    "tessera_power_budget_max_over_budget_seconds", "gauge",
    "How long a PowerBudget's group may draw more than its provisioned watts.", ("budget",)
)
POWER_GROUP_WATTS = MetricSpec(
    "tessera_power_group_watts", "gauge", "A PowerBudget group's draw, summed from the node agents.", ("budget",)
)
POWER_GROUP_OVER_SECONDS = MetricSpec(
    "tessera_power_group_over_budget_seconds", "gauge",
    "How long the group has drawn more than provisioned watts without a break (0 when within).", ("budget",)
)
POWER_GROUP_CAP_LEVEL = MetricSpec(
    "tessera_power_group_cap_level", "gauge", "The group's cap level: 0 none, 1 above T1, 2 above T2.", ("budget",)
)
POWER_GROUP_CAPPED_DEVICES = MetricSpec(
    "tessera_power_group_capped_devices", "gauge", "Devices of the group under a cap.", ("budget",)
)
POWER_CAP_CHANGES = MetricSpec(
    "tessera_power_cap_changes", "counter", "Cap level changes of a group, by direction (cap, lift).",
    ("budget", "direction"),
)

# --- node power agent ----------------------------------------------------------------------
AGENT_DEVICE_WATTS = MetricSpec(
    "tessera_power_device_watts", "gauge", "An accelerator's power draw.", ("node", "device")
)
AGENT_DEVICE_LIMIT_WATTS = MetricSpec(
    "tessera_power_device_limit_watts", "gauge", "An accelerator's power limit in force.", ("node", "device")
)
AGENT_NODE_WATTS = MetricSpec(
    "tessera_power_node_watts", "gauge", "The draw of every accelerator of a node.", ("node",)
)
AGENT_LIMIT_WRITES = MetricSpec(
    "tessera_power_limit_writes", "counter", "Power limits the agent wrote, by outcome (ok, refused, error).",
    ("node", "outcome"),
)

# --- workers -----------------------------------------------------------------------------
WORKER_REQUESTS = MetricSpec(
    "tessera_requests", "counter", "Workflow requests finished, by outcome (ok, error, deadline_missed).",
    ("workflow", "priority", "outcome"),
)
WORKER_REQUEST_SECONDS = MetricSpec(
    "tessera_request_duration_seconds", "histogram", "End-to-end workflow request latency.",
    ("workflow", "priority"), LATENCY_BUCKETS_S,
)
WORKER_SLO_MET = MetricSpec(
    "tessera_request_slo_met", "counter", "Workflow requests that finished within their deadline.",
    ("workflow", "priority"),
)
WORKER_STAGE_SECONDS = MetricSpec(
    "tessera_stage_duration_seconds", "histogram", "Latency of one stage call.",
    ("workflow", "stage", "hardware_class"), LATENCY_BUCKETS_S,
)
WORKER_QUEUE_DEPTH = MetricSpec(
    "tessera_replica_queue_depth", "gauge", "Calls waiting in a replica's urgency queue.",
    ("stage", "replica", "hardware_class"),
)
WORKER_QUEUE_WAIT_SECONDS = MetricSpec(
    "tessera_replica_queue_wait_seconds", "histogram", "Time a call waited in a replica's queue.",
    ("stage", "hardware_class"), LATENCY_BUCKETS_S,
)
WORKER_REPLICA_USD_PER_HOUR = MetricSpec(
    "tessera_replica_usd_per_hour", "gauge", "Hourly price of the hardware a running replica occupies.",
    ("workflow", "stage", "replica", "hardware_class"),
)
WORKER_REPLICA_WATTS = MetricSpec(
    "tessera_replica_power_watts", "gauge", "Power a running replica is planned to draw (its stage's expected watts per replica).",
    ("workflow", "stage", "replica", "hardware_class"),
)
WORKER_DEADLINE_MISSES = MetricSpec(
    "tessera_deadline_misses", "counter", "Requests that finished after their deadline.", ("workflow", "stage"),
)
WORKER_SQL_CANDIDATES = MetricSpec(
    "tessera_sql_candidates_executed", "counter", "SQL candidates executed against the database.", ()
)
WORKER_SQL_ERRORS = MetricSpec(
    "tessera_sql_errors", "counter", "SQL statements that failed or were refused, by kind.", ("kind",)
)
LLM_TOKENS = MetricSpec(
    "tessera_llm_generated_tokens", "counter", "Tokens generated by an LLM engine.", ("model",)
)
LLM_SPEC_DRAFTED = MetricSpec(
    "tessera_specdec_drafted_tokens", "counter", "Tokens proposed by the draft.", ("model", "method")
)
LLM_SPEC_ACCEPTED = MetricSpec(
    "tessera_specdec_accepted_tokens", "counter", "Drafted tokens accepted by the target.", ("model", "method")
)
LLM_SPEC_TARGET_STEPS = MetricSpec(
    "tessera_specdec_target_steps", "counter", "Target-model forward passes (verification steps).",
    ("model", "method"),
)
LLM_SPEC_DRAFT_SECONDS = MetricSpec(
    "tessera_specdec_draft_seconds", "counter", "Time spent drafting.", ("model", "method")
)
LLM_SPEC_VERIFY_SECONDS = MetricSpec(
    "tessera_specdec_verify_seconds", "counter", "Time spent verifying drafts.", ("model", "method")
)

ALL_METRICS: tuple[MetricSpec, ...] = tuple(v for v in list(globals().values()) if isinstance(v, MetricSpec))


def exposed_names(spec: MetricSpec) -> tuple[str, ...]:
    """The series names Prometheus sees for a metric (counters gain _total, histograms _bucket/_sum/_count)."""
    if spec.type == "counter":
        return (f"{spec.name}_total",)
    if spec.type == "histogram":
        return tuple(f"{spec.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return (spec.name,)
