"""Prometheus metrics of the LLM engine (names from ``tessera.api.metrics``; objects made once per process)."""

from __future__ import annotations

from typing import Any

from tessera.api import metrics as catalogue
from tessera.workers.metrics import make_metric


def record_generation(model: str, stats: dict[str, Any]) -> None:
    """Count one finished generation's tokens and, if it was speculative, its drafting figures."""
    make_metric(catalogue.LLM_TOKENS).labels(model=model).inc(stats.get("generated_tokens", 0))
    method = stats.get("method")
    if not method or "drafted_tokens" not in stats:  # plain or batched decoding: nothing was drafted
        return
    labels = {"model": model, "method": method}
    make_metric(catalogue.LLM_SPEC_DRAFTED).labels(**labels).inc(stats["drafted_tokens"])
    make_metric(catalogue.LLM_SPEC_ACCEPTED).labels(**labels).inc(stats["accepted_tokens"])
    make_metric(catalogue.LLM_SPEC_TARGET_STEPS).labels(**labels).inc(stats["target_steps"])
    make_metric(catalogue.LLM_SPEC_DRAFT_SECONDS).labels(**labels).inc(stats["draft_seconds"])
    make_metric(catalogue.LLM_SPEC_VERIFY_SECONDS).labels(**labels).inc(stats["verify_seconds"])
