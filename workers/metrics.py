"""prometheus-client objects made from the specs in ``tessera.api.metrics``, and their exporter.

Ray Serve replicas are separate processes, so the workers use prometheus-client's multiprocess
mode: every replica writes its samples under ``PROMETHEUS_MULTIPROC_DIR`` (set on the Ray pods, or
by the demo before it starts Ray), and one exporter per node serves them all —
``python -m tessera.workers.metrics --port 9100`` as a sidecar of a Ray worker pod, or
``serve_metrics`` inside the demo. Without the variable, a process serves its own metrics.

Metrics never break a request: a folder that is missing and cannot be made, or is not writable,
is logged once and the process keeps its metrics in memory; a write that fails later (the folder
removed or full) is logged once per metric and dropped. A process that exits marks itself dead,
so its gauges leave the exporter's output (see ``GAUGE_MODE``).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import glob
import logging
import os
import re
import tempfile
import time

from tessera.api.metrics import MetricSpec
from tessera.api.serve import WORKER_METRICS_PORT

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How the exporter merges one gauge's samples from several processes. Every worker gauge is one
# replica's current state (queue depth, price, draw), written by that replica's process alone:
# "mostrecent" reports the last value set, so a label set rewritten by a replacement process is not
# summed with its dead predecessor's (livesum reported 3 x 700 W as 2,100 W), "max" would keep a dead
# process's higher value, "liveall" adds a pid label that splits one replica's series. The "live"
# prefix drops a process's gauges once it is marked dead (at exit, or by the exporter's sweep).
GAUGE_MODE = "livemostrecent"
SWEEP_INTERVAL_S = 15.0

log = logging.getLogger(__name__)


class SafeMetric:
    """A prometheus-client metric, or one label set of it, whose updates never raise OSError.

    In multiprocess mode each update may create or grow a file in the shared folder; if that fails,
    the update is dropped and the failure logged once per metric. Programming errors (a wrong label
    name) still raise. Anything else (``clear``, ``collect``, ...) goes to the metric itself.
    """

    def __init__(self, metric, name: str):
        self._metric, self._name = metric, name

    def _guarded(self, method: str, /, *args, **kwargs):  # "/": a label may be named "method"
        try:
            return getattr(self._metric, method)(*args, **kwargs)
        except OSError as err:
            _warn_once(self._name, f"metric {self._name}: update dropped, the metrics folder failed ({err})")
            return None

    def labels(self, *args, **kwargs) -> "SafeMetric":
        child = self._guarded("labels", *args, **kwargs)
        return SafeMetric(child, self._name) if child is not None else _DROPPED

    def inc(self, amount: float = 1) -> None:
        self._guarded("inc", amount)

    def dec(self, amount: float = 1) -> None:
        self._guarded("dec", amount)

    def set(self, value: float) -> None:
        self._guarded("set", value)

    def observe(self, amount: float) -> None:
        self._guarded("observe", amount)

    def __getattr__(self, name: str):
        return getattr(self._metric, name)


class _DroppedMetric:
    """A label set whose creation failed: its updates go nowhere (the failure was already logged)."""

    def labels(self, *_args, **_kwargs) -> "_DroppedMetric":
        return self

    def inc(self, *_args) -> None: ...

    def dec(self, *_args) -> None: ...

    def set(self, *_args) -> None: ...

    def observe(self, *_args) -> None: ...


_DROPPED = _DroppedMetric()


@functools.cache
def _warn_once(key: str, message: str) -> None:
    log.warning(message)


@functools.cache
def multiprocess_dir() -> str | None:
    """The shared folder this process writes its samples to, or None for in-memory metrics: none is
    configured, or the configured one is missing and cannot be made, or is not writable (logged once,
    and this process then keeps its metrics in memory rather than failing requests)."""
    from prometheus_client import values

    path = os.environ.get(MULTIPROC_DIR_ENV)
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as err:
        log.warning("metrics: %s=%s is not a writable folder (%s); this process keeps its metrics in memory",
                    MULTIPROC_DIR_ENV, path, err)
        values.ValueClass = values.MutexValue  # chosen at import from the variable alone
        return None
    pid = os.getpid()
    atexit.register(_mark_dead, pid, path)
    return path


def _mark_dead(pid: int, path: str) -> None:
    from prometheus_client import multiprocess

    if os.getpid() == pid:  # not in a forked child that inherited the handler
        try:
            multiprocess.mark_process_dead(pid, path)
        except OSError as err:
            log.warning("metrics: could not mark process %d dead in %s (%s)", pid, path, err)


@functools.cache
def make_metric(spec: MetricSpec) -> "SafeMetric | _DroppedMetric":
    """The Counter, Gauge or Histogram for ``spec`` (wrapped in SafeMetric); the same object on every
    call (prometheus-client refuses to register one name twice)."""
    import prometheus_client

    multiprocess_dir()
    try:  # a metric without labels writes its first sample at once
        if spec.type == "counter":
            metric = prometheus_client.Counter(spec.name, spec.help, spec.labels)
        elif spec.type == "gauge":
            metric = prometheus_client.Gauge(spec.name, spec.help, spec.labels, multiprocess_mode=GAUGE_MODE)
        else:
            metric = prometheus_client.Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets)
    except OSError as err:
        _warn_once(spec.name, f"metric {spec.name}: dropped in this process, the metrics folder failed ({err})")
        return _DROPPED
    return SafeMetric(metric, spec.name)


def sweep_dead_processes(path: str) -> list[int]:
    """Marks dead every process that left gauges in ``path`` and no longer runs; the pids swept.

    Only sound where this process sees the writers' pids (one PID namespace: the demo, or a pod
    with ``shareProcessNamespace``); it covers replicas killed before their exit handler ran.
    """
    from prometheus_client import multiprocess

    dead = set()
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = re.search(r"_(\d+)\.db$", file)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:
            pass  # alive, owned by another user
    for pid in sorted(dead):
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


def metrics_registry():
    """What an exporter serves: every worker process's samples in multiprocess mode, else this process's."""
    import prometheus_client
    from prometheus_client import multiprocess

    if not multiprocess_dir():
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
    parser.add_argument("--port", type=int, default=WORKER_METRICS_PORT, help="port to serve /metrics on")
    parser.add_argument("--dir", default=os.environ.get(MULTIPROC_DIR_ENV),
                        help=f"the shared folder (default: ${MULTIPROC_DIR_ENV})")
    parser.add_argument("--sweep-dead", action="store_true",
                        help="every 15 s, drop the gauges of writer processes that no longer run (only where "
                        "this process sees their pids: the same host, or a pod with shareProcessNamespace)")
    args = parser.parse_args(argv)
    if not args.dir:
        parser.error(f"--dir: required when ${MULTIPROC_DIR_ENV} is not set")
    os.environ[MULTIPROC_DIR_ENV] = args.dir
    if multiprocess_dir() is None:
        parser.error(f"--dir: {args.dir} is not a writable folder")
    print(f"serving {serve_metrics(args.port)} from {args.dir}", flush=True)
    while True:
        time.sleep(SWEEP_INTERVAL_S if args.sweep_dead else 3600)
        if args.sweep_dead:
            sweep_dead_processes(args.dir)


if __name__ == "__main__":
    raise SystemExit(main())
