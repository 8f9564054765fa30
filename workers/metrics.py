"""prometheus-client objects made from the specs in ``tessera.api.metrics``, and their exporter.

Ray Serve replicas are separate processes, so the workers use prometheus-client's multiprocess
mode: every replica writes its samples under ``PROMETHEUS_MULTIPROC_DIR`` (set on the Ray pods, or
by the demo before it starts Ray), and one exporter per node serves them all —
``python -m tessera.workers.metrics --port 9100`` as a sidecar of a Ray worker pod, or
``serve_metrics`` inside the demo. Without the variable, a process serves its own metrics.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

from tessera.api.metrics import MetricSpec

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_EXPORTER_PORT = 9100


@functools.cache
def make_metric(spec: MetricSpec):
    """The Counter, Gauge or Histogram for ``spec``; the same object on every call (prometheus-client
    refuses to register one name twice)."""
    import prometheus_client

    if spec.type == "counter":
        return prometheus_client.Counter(spec.name, spec.help, spec.labels)
    if spec.type == "gauge":
        # In multiprocess mode: the sum over the replicas alive now (a dead replica's gauges drop out).
        return prometheus_client.Gauge(spec.name, spec.help, spec.labels, multiprocess_mode="livesum")
    return prometheus_client.Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets)


def metrics_registry():
    """What an exporter serves: every worker process's samples in multiprocess mode, else this process's."""
    import prometheus_client
    from prometheus_client import multiprocess

    if not os.environ.get(MULTIPROC_DIR_ENV):
        return prometheus_client.REGISTRY
    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def serve_metrics(port: int, addr: str = "0.0.0.0") -> str:
    """Serve ``metrics_registry()`` on ``http://addr:port/metrics`` from a background thread; the URL."""
    import prometheus_client

    prometheus_client.start_http_server(port, addr=addr, registry=metrics_registry())
    return f"http://{addr}:{port}/metrics"


def sample_sum(name: str, registry=None) -> float:
    """The sum of every sample called ``name`` (e.g. a counter's ``..._total``) across all label sets."""
    registry = registry or metrics_registry()
    return sum(s.value for family in registry.collect() for s in family.samples if s.name == name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tessera.workers.metrics",
        description="Serve the Prometheus metrics that every Tessera worker process on this node writes under "
        f"${MULTIPROC_DIR_ENV} (run as a sidecar of a Ray worker pod, sharing that folder).",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_EXPORTER_PORT, help="port to serve /metrics on")
    parser.add_argument("--dir", default=os.environ.get(MULTIPROC_DIR_ENV),
                        help=f"the shared folder (default: ${MULTIPROC_DIR_ENV})")
    args = parser.parse_args(argv)
    if not args.dir:
        parser.error(f"--dir: required when ${MULTIPROC_DIR_ENV} is not set")
    os.makedirs(args.dir, exist_ok=True)
    os.environ[MULTIPROC_DIR_ENV] = args.dir
    print(f"serving {serve_metrics(args.port)} from {args.dir}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
