"""prometheus-client objects made from the specs in ``tessera.api.metrics`` (one object per name per process)."""

from __future__ import annotations

import functools

from tessera.api.metrics import MetricSpec


@functools.cache
def make_metric(spec: MetricSpec):
    """The Counter, Gauge or Histogram for ``spec``; the same object on every call (prometheus-client
    refuses to register one name twice)."""
    import prometheus_client

    if spec.type == "counter":
        return prometheus_client.Counter(spec.name, spec.help, spec.labels)
    if spec.type == "gauge":
        return prometheus_client.Gauge(spec.name, spec.help, spec.labels)
    return prometheus_client.Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets)
