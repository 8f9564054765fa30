"""Prometheus metrics of the LLM engine, created once per process from the specs in ``tessera.api.metrics``."""

from __future__ import annotations

import functools
from typing import Any

from tessera.api import metrics as catalogue


@functools.cache
def _metric(spec: catalogue.MetricSpec):
    import prometheus_client

    kind = {"counter": prometheus_client.Counter, "gauge": prometheus_client.Gauge}[spec.type]
    return kind(spec.name, spec.help, spec.labels)


def record_generation(model: str, stats: dict[str, Any]) -> None:
    """Count one finished generation's tokens and, if it was speculative, its drafting figures."""
    _metric(catalogue.LLM_TOKENS).labels(model=model).inc(stats.get("generated_tokens", 0))
    method = stats.get("method")
    if not method or method == "plain":
        return
    labels = {"model": model, "method": method}
    _metric(catalogue.LLM_SPEC_DRAFTED).labels(**labels).inc(stats["drafted_tokens"])
    _metric(catalogue.LLM_SPEC_ACCEPTED).labels(**labels).inc(stats["accepted_tokens"])
    _metric(catalogue.LLM_SPEC_TARGET_STEPS).labels(**labels).inc(stats["target_steps"])
    _metric(catalogue.LLM_SPEC_DRAFT_SECONDS).labels(**labels).inc(stats["draft_seconds"])
    _metric(catalogue.LLM_SPEC_VERIFY_SECONDS).labels(**labels).inc(stats["verify_seconds"])
