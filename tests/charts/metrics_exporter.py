"""Serves Tessera's metrics with a synthetic workload, for the Prometheus end-to-end test.

One process per role, as in a cluster: ``--role operator`` records through the operator's metrics
object and serves them with the operator's own /metrics server; ``--role workers`` records the LLM
engine's figures through its recording function and creates the other worker metrics from their
MetricSpec in ``tessera.api.metrics`` (the workers have no recording functions for them yet). The load swings in a sine wave, so latency
percentiles, queues and watts move the way they do under real traffic.

    python -P tests/charts/metrics_exporter.py --role workers --port 9101
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import time

import prometheus_client

from tessera.api import metrics as catalogue

TICK_SECONDS = 0.2
LOAD_PERIOD_SECONDS = 60.0
HARDWARE_USD_PER_HOUR = {"a100": 3.0, "l40s": 1.6}
HARDWARE_BUSY_WATTS = {"a100": 400.0, "l40s": 300.0}


class Workflow:
    def __init__(self, name, target_s, objective, rate, stages, hardware):
        self.name, self.target_s, self.objective, self.rate = name, target_s, objective, rate
        self.stages = stages  # stage name -> share of the end-to-end latency
        self.hardware = hardware  # stage name -> hardware class
        self.replicas = {stage: [f"{name}-{stage}-{i}" for i in range(2)] for stage in stages}


WORKFLOWS = (
    Workflow("chat", 2.0, 0.99, 6.0, {"retrieve": 0.2, "answer": 0.8}, {"retrieve": "l40s", "answer": "a100"}),
    Workflow("text2sql", 30.0, 0.95, 1.5, {"schema-link": 0.15, "generate": 0.6, "revise": 0.25},
             {"schema-link": "l40s", "generate": "a100", "revise": "a100"}),
)
POWER_BUDGETS = {"rack-a": 6000.0}


@functools.cache
def metric(spec: catalogue.MetricSpec):
    """The prometheus-client object of a spec, for worker metrics no project module records yet."""
    if spec.type == "histogram":
        return prometheus_client.Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets)
    kind = {"counter": prometheus_client.Counter, "gauge": prometheus_client.Gauge}[spec.type]
    return kind(spec.name, spec.help, spec.labels)


def load_factor(now: float) -> float:
    """1 on average; peaks at 1.8, where queues build and the latency tail crosses the target."""
    return 1.0 + 0.8 * math.sin(2 * math.pi * now / LOAD_PERIOD_SECONDS)


def poisson(mean: float) -> int:
    count, threshold, product = 0, math.exp(-mean), random.random()
    while product > threshold:
        count += 1
        product *= random.random()
    return count


class OperatorTraffic:
    """Through the operator's own metrics object, as its handlers record them."""

    def __init__(self) -> None:
        from tessera.operator.metrics import operator_metrics

        self.metrics = operator_metrics()
        self.next_plan_change = 0.0

    def tick(self, now: float, load: float) -> None:
        plan_changed = now >= self.next_plan_change
        if plan_changed:
            self.next_plan_change = now + LOAD_PERIOD_SECONDS / 4
        for workflow in WORKFLOWS:
            usd = sum(HARDWARE_USD_PER_HOUR[workflow.hardware[s]] * len(r) for s, r in workflow.replicas.items())
            watts = sum(HARDWARE_BUSY_WATTS[workflow.hardware[s]] * 0.6 * len(r) for s, r in workflow.replicas.items())
            status = {"phase": "Running", "predicted": {
                "usdPerHour": usd, "watts": watts, "latencyMsAtSlo": workflow.target_s * 700}}
            slo = {"latencyMs": workflow.target_s * 1000, "percentile": workflow.objective * 100}
            self.metrics.workflow_status("default", workflow.name, status, slo, plan_changed)
        for _ in range(poisson(2 * TICK_SECONDS)):
            self.metrics.reconciled("ok" if random.random() > 0.05 else "error", random.lognormvariate(-3, 0.5))
            self.metrics.solved("fast", random.lognormvariate(-4, 0.4))
        self.metrics.budgets(POWER_BUDGETS, {name: watts * (0.6 + 0.25 * load) for name, watts in POWER_BUDGETS.items()})


class WorkerTraffic:
    def __init__(self) -> None:
        # Rare events start at zero, so their series exist before the first one happens.
        for workflow in WORKFLOWS:
            metric(catalogue.WORKER_DEADLINE_MISSES).labels(workflow=workflow.name, stage=list(workflow.stages)[-1])
        metric(catalogue.WORKER_SQL_ERRORS).labels(kind="syntax")

    def tick(self, now: float, load: float) -> None:
        from tessera.workers.llm.metrics import record_generation

        for workflow in WORKFLOWS:
            for _ in range(poisson(workflow.rate * load * TICK_SECONDS)):
                self.request(workflow, load)
            for stage, replicas in workflow.replicas.items():
                hardware = workflow.hardware[stage]
                for replica in replicas:
                    labels = {"workflow": workflow.name, "stage": stage, "replica": replica, "hardware_class": hardware}
                    busy = min(1.0, 0.35 * load + random.uniform(0, 0.1))
                    metric(catalogue.WORKER_QUEUE_DEPTH).labels(stage=stage, replica=replica,
                                                                hardware_class=hardware).set(poisson(2 * load**2))
                    metric(catalogue.WORKER_REPLICA_USD_PER_HOUR).labels(**labels).set(HARDWARE_USD_PER_HOUR[hardware])
                    metric(catalogue.WORKER_REPLICA_WATTS).labels(**labels).set(
                        HARDWARE_BUSY_WATTS[hardware] * (0.2 + 0.8 * busy))
        drafted = poisson(40 * load * TICK_SECONDS * 5)
        accepted = sum(random.random() < 0.7 for _ in range(drafted))
        record_generation("smollm2-135m", {
            "generated_tokens": accepted + drafted // 4, "method": "draft_head_ngram", "drafted_tokens": drafted,
            "accepted_tokens": accepted, "target_steps": drafted // 4, "draft_seconds": 0.01 * drafted,
            "verify_seconds": 0.03 * (drafted // 4),
        })

    def request(self, workflow: Workflow, load: float) -> None:
        latency = workflow.target_s * 0.45 * load * random.lognormvariate(0, 0.35)
        priority = random.choice(("0", "5"))
        missed = latency > workflow.target_s * 1.5
        outcome = "error" if random.random() < 0.01 else "deadline_missed" if missed else "ok"
        metric(catalogue.WORKER_REQUESTS).labels(workflow=workflow.name, priority=priority, outcome=outcome).inc()
        metric(catalogue.WORKER_REQUEST_SECONDS).labels(workflow=workflow.name, priority=priority).observe(latency)
        if outcome == "ok" and latency <= workflow.target_s:
            metric(catalogue.WORKER_SLO_MET).labels(workflow=workflow.name, priority=priority).inc()
        for stage, share in workflow.stages.items():
            hardware = workflow.hardware[stage]
            metric(catalogue.WORKER_STAGE_SECONDS).labels(
                workflow=workflow.name, stage=stage, hardware_class=hardware).observe(latency * share)
            metric(catalogue.WORKER_QUEUE_WAIT_SECONDS).labels(stage=stage, hardware_class=hardware).observe(
                latency * share * 0.3 * random.random())
        if missed:
            metric(catalogue.WORKER_DEADLINE_MISSES).labels(workflow=workflow.name, stage=list(workflow.stages)[-1]).inc()
        if workflow.name == "text2sql":
            metric(catalogue.WORKER_SQL_CANDIDATES).inc(4)
            if random.random() < 0.1:
                metric(catalogue.WORKER_SQL_ERRORS).labels(kind="syntax").inc()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("operator", "workers"), required=True, help="which component to imitate")
    parser.add_argument("--port", type=int, required=True, help="port of /metrics on 127.0.0.1")
    args = parser.parse_args()
    traffic = OperatorTraffic() if args.role == "operator" else WorkerTraffic()
    start = time.monotonic()
    traffic.tick(0.0, load_factor(0.0))
    if args.role == "operator":
        from tessera.operator.metrics import serve

        serve(args.port)
    else:
        prometheus_client.start_http_server(args.port, addr="127.0.0.1")
    while True:
        time.sleep(TICK_SECONDS)
        now = time.monotonic() - start
        traffic.tick(now, load_factor(now))


if __name__ == "__main__":
    main()
