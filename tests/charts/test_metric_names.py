"""Every metric a dashboard or an alert rule reads is in the catalogue (api/metrics.py) and exported by the code."""

from __future__ import annotations

import functools
import re

import pytest
import yaml

from tessera.api import metrics as catalogue

from .chartlib import REPO_ROOT, dashboard_queries, rule_queries, rules
from .promql import metric_names

# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_OWN_SERIES = {"up"}
# The catalogue's names by the constant that holds each spec, to find where the code uses them.
SPEC_CONSTANTS = {name: value for name, value in vars(catalogue).items() if isinstance(value, catalogue.MetricSpec)}
EXPOSED = {exposed: spec for spec in catalogue.ALL_METRICS for exposed in catalogue.exposed_names(spec)}
# The parts of the code that serve /metrics: the operator and the workers.
EXPORTING_PACKAGES = ("operator", "workers")


RECORDED = {rule["record"] for rule in rules() if "record" in rule}


def used_names() -> dict[str, str]:
    used = {}
    for where, query in dashboard_queries() + rule_queries():
        for name in metric_names(query):
            used.setdefault(name, where)
    return used


def test_the_name_finder_sees_metrics_and_nothing_else():
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(tessera_stage_duration_seconds_bucket'
            '{workflow=~"$workflow", stage="a b"}[$__rate_interval]))) / on(stage) group_left() '
            'max without (replica) (tessera_replica_queue_depth offset 5m) > bool 1e3')
    assert metric_names(expr) == {"tessera_stage_duration_seconds_bucket", "tessera_replica_queue_depth"}
    assert metric_names("label_values(tessera_requests_total{x=\"y\"}, workflow)") == {"tessera_requests_total"}
    assert metric_names('up{job="tessera-operator"} == 0 or absent(up{job="tessera-operator"})') == {"up"}


def test_dashboards_and_rules_read_only_catalogued_metrics():
    unknown = {name: where for name, where in used_names().items()
               if name not in EXPOSED and name not in RECORDED and name not in PROMETHEUS_OWN_SERIES}
    assert not unknown, f"not in api/metrics.py (or misspelt): {unknown}"


def test_dashboards_read_series_as_exposed_not_by_base_name():
    # A counter is read as <name>_total and a histogram as <name>_bucket/_sum/_count; the bare name has no data.
    bare = {spec.name for spec in catalogue.ALL_METRICS if spec.type != "gauge"}
    assert not bare & set(used_names())


@functools.cache
def python_sources() -> str:
    return "\n".join(
        path.read_text() for package in EXPORTING_PACKAGES for path in (REPO_ROOT / package).rglob("*.py")
    )


@pytest.mark.parametrize(
    "metric", sorted({EXPOSED[name].name for name in used_names() if name in EXPOSED}),
)
def test_every_metric_read_by_a_dashboard_or_rule_is_exported_by_the_code(metric):
    constant = next(name for name, spec in SPEC_CONSTANTS.items() if spec.name == metric)
    recorded = re.search(rf"\b{constant}\b", python_sources()) is not None
    assert recorded, (
        f"{metric} ({constant} in api/metrics.py) is read by a dashboard or rule, but neither operator/ nor "
        "workers/ records it"
    )
