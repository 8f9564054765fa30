"""The operator's Prometheus metrics (names and help from ``tessera.api.metrics``), served on /metrics."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tessera.api import metrics as catalogue
from tessera.api import Phase


def _make(spec: catalogue.MetricSpec, registry: CollectorRegistry) -> Any:
    if spec.type == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.type == "gauge":
        return Gauge(spec.name, spec.help, spec.labels, registry=registry)
    return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets or Histogram.DEFAULT_BUCKETS,
                     registry=registry)


class OperatorMetrics:
    """One set per process (prometheus-client registries are process-wide)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.registry = registry
        self.reconciles = _make(catalogue.OPERATOR_RECONCILES, registry)
        self.reconcile_seconds = _make(catalogue.OPERATOR_RECONCILE_SECONDS, registry)
        self.workflows = _make(catalogue.OPERATOR_WORKFLOWS, registry)
        self.usd_per_hour = _make(catalogue.OPERATOR_PLANNED_USD_PER_HOUR, registry)
        self.watts = _make(catalogue.OPERATOR_PLANNED_WATTS, registry)
        self.latency_seconds = _make(catalogue.OPERATOR_PLANNED_LATENCY_SECONDS, registry)
        self.slo_target_seconds = _make(catalogue.OPERATOR_SLO_TARGET_SECONDS, registry)
        self.slo_objective = _make(catalogue.OPERATOR_SLO_OBJECTIVE, registry)
        self.plan_changes = _make(catalogue.OPERATOR_PLAN_CHANGES, registry)
        self.solve_seconds = _make(catalogue.OPERATOR_PLAN_SOLVE_SECONDS, registry)
        self.budget_provisioned = _make(catalogue.POWER_BUDGET_PROVISIONED_WATTS, registry)
        self.budget_planned = _make(catalogue.POWER_BUDGET_PLANNED_WATTS, registry)
        self.budget_oversubscribed = _make(catalogue.POWER_BUDGET_OVERSUBSCRIBED_WATTS, registry)
        self.budget_max_over_seconds = _make(catalogue.POWER_BUDGET_MAX_OVER_SECONDS, registry)
        self.group_watts = _make(catalogue.POWER_GROUP_WATTS, registry)
        self.group_over_seconds = _make(catalogue.POWER_GROUP_OVER_SECONDS, registry)
        self.group_cap_level = _make(catalogue.POWER_GROUP_CAP_LEVEL, registry)
        self.group_capped_devices = _make(catalogue.POWER_GROUP_CAPPED_DEVICES, registry)
        self.cap_changes = _make(catalogue.POWER_CAP_CHANGES, registry)
        self._phases: dict[str, str] = {}
        self._budgets: set[str] = set()

    def reconciled(self, outcome: str, seconds: float) -> None:
        self.reconciles.labels(outcome=outcome).inc()
        self.reconcile_seconds.labels(outcome=outcome).observe(seconds)

    def solved(self, solver: str, seconds: float) -> None:
        self.solve_seconds.labels(solver=solver).observe(seconds)

    def workflow_status(self, namespace: str, name: str, status: dict[str, Any], slo: dict[str, Any] | None,
                        plan_changed: bool) -> None:
        labels = {"namespace": namespace, "workflow": name}
        predicted = status.get("predicted")
        if predicted:
            self.usd_per_hour.labels(**labels).set(predicted.get("usdPerHour", 0))
            self.watts.labels(**labels).set(predicted.get("watts", 0))
            self.latency_seconds.labels(**labels).set(predicted.get("latencyMsAtSlo", 0) / 1000)
        else:
            for gauge in (self.usd_per_hour, self.watts, self.latency_seconds):
                _remove(gauge, labels)
        if slo:
            self.slo_target_seconds.labels(**labels).set(slo.get("latencyMs", 0) / 1000)
            self.slo_objective.labels(**labels).set(slo.get("percentile", 99) / 100)
        if plan_changed:
            self.plan_changes.labels(**labels).inc()
        self._phases[f"{namespace}/{name}"] = status.get("phase", Phase.pending.value)
        self._publish_phases()

    def workflow_gone(self, namespace: str, name: str) -> None:
        labels = {"namespace": namespace, "workflow": name}
        for gauge in (self.usd_per_hour, self.watts, self.latency_seconds, self.slo_target_seconds,
                      self.slo_objective, self.plan_changes):
            _remove(gauge, labels)
        self._phases.pop(f"{namespace}/{name}", None)
        self._publish_phases()

    def budgets(self, provisioned: dict[str, float], planned: dict[str, float]) -> None:
        """Every PowerBudget's provisioned and planned watts; the series of deleted budgets go."""
        for name, watts in provisioned.items():
            self.budget_provisioned.labels(budget=name).set(watts)
            self.budget_planned.labels(budget=name).set(planned.get(name, 0.0))
        for name in self._budgets - set(provisioned):
            for gauge in (self.budget_provisioned, self.budget_planned):
                _remove(gauge, {"budget": name})
        self._budgets = set(provisioned)

    def power_group(self, budget: str, oversubscribed_watts: float, max_over_seconds: float, draw: float,
                    level: int, capped: int, over_seconds: float) -> None:
        """A PowerBudget group's live figures (the power controller's tick)."""
        self.budget_oversubscribed.labels(budget=budget).set(oversubscribed_watts)
        self.budget_max_over_seconds.labels(budget=budget).set(max_over_seconds)
        self.group_watts.labels(budget=budget).set(draw)
        self.group_over_seconds.labels(budget=budget).set(over_seconds)
        self.group_cap_level.labels(budget=budget).set(int(level))
        self.group_capped_devices.labels(budget=budget).set(capped)

    def power_cap_changed(self, budget: str, direction: str) -> None:
        self.cap_changes.labels(budget=budget, direction=direction).inc()

    def power_group_gone(self, budget: str) -> None:
        for gauge in (self.budget_oversubscribed, self.budget_max_over_seconds, self.group_watts,
                      self.group_over_seconds, self.group_cap_level, self.group_capped_devices):
            _remove(gauge, {"budget": budget})

    def _publish_phases(self) -> None:
        counts = Tally(self._phases.values())
        for phase in Phase:
            self.workflows.labels(phase=phase.value).set(counts.get(phase.value, 0))


def _remove(gauge: Any, labels: dict[str, str]) -> None:
    try:
        gauge.remove(*labels.values())
    except KeyError:
        pass


_METRICS: OperatorMetrics | None = None


def operator_metrics() -> OperatorMetrics:
    """The process's metrics, created on first use."""
    global _METRICS
    if _METRICS is None:
        _METRICS = OperatorMetrics()
    return _METRICS


def serve(port: int) -> None:
    """Serve /metrics of the default registry on ``port`` (a background thread)."""
    start_http_server(port)
