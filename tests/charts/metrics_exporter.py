"""Serves Tessera's metrics for the Prometheus end-to-end test: the operator's and the workers' /metrics.

``--role operator``: the real operator (kopf with Tessera's handlers) reconciles the example inventory
and workflows in kmock's emulated cluster (``tessera.operator.testing``) and serves its metrics with
``tessera.operator.metrics.serve``, as it does in its pod. A user keeps changing the chat workflow's
planned request rate with the load, so the operator keeps replanning. Once every workflow has a plan,
the workflows with their plans are written to ``--plans``.

``--role workers``: synthetic requests shaped by those plans (workflow names, SLOs, stages, hardware
classes, replicas, predicted latencies, $/h and watts). The LLM figures go through the engine's
recording function ``tessera.workers.llm.metrics.record_generation``; the other worker metrics are
created from their MetricSpec in ``tessera.api.metrics`` (the workers have no recording functions for
them yet). The load swings in a one-minute sine wave, so percentiles, queues and watts move.

    python -P tests/charts/metrics_exporter.py --role operator --port 9101 --plans /tmp/plans.json
    python -P tests/charts/metrics_exporter.py --role workers --port 9102 --plans /tmp/plans.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from tessera.api import metrics as catalogue

TICK_SECONDS = 0.2
LOAD_PERIOD_SECONDS = 60.0
REPLAN_SECONDS = 2.0
PLANS_TIMEOUT_SECONDS = 120.0
MAX_REPLICA_SERIES = 8  # per stage: enough to show the spread without thousands of series
SQL_ERROR_KINDS = ("syntax", "refused")


def load_factor(now: float) -> float:
    """1 on average, from 0.4 to 1.6: at the peaks queues build and the latency tail crosses the target."""
    return 1.0 + 0.6 * math.sin(2 * math.pi * now / LOAD_PERIOD_SECONDS)


def poisson(mean: float) -> int:
    count, threshold, product = 0, math.exp(-mean), random.random()
    while product > threshold:
        count += 1
        product *= random.random()
    return count


# --- the operator ------------------------------------------------------------------------------------
def run_operator(port: int, plans_path: Path) -> None:
    from tessera.operator.metrics import serve
    from tessera.operator.testing import EXAMPLES, EmulatedCluster, OperatorRun

    api = ("tessera.dev/v1alpha1", "agentworkflows")
    with EmulatedCluster(nodes=EmulatedCluster.example_nodes()) as cluster:
        cluster.apply_files(EXAMPLES / "inventory", EXAMPLES / "workflows")
        with OperatorRun(cluster):
            serve(port)  # what the operator's start-up does with TESSERA_METRICS_PORT
            deadline = time.monotonic() + PLANS_TIMEOUT_SECONDS
            while True:
                workflows = cluster.list(*api)
                if all((wf.get("status") or {}).get("plan") for wf in workflows):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the operator planned no workflows within {PLANS_TIMEOUT_SECONDS:.0f} s")
                time.sleep(0.5)
            partial = plans_path.with_suffix(".partial")
            partial.write_text(json.dumps(workflows))
            partial.rename(plans_path)
            chat = next(wf for wf in workflows if wf["metadata"]["name"] == "chat")
            planned_rate = chat["spec"]["slo"]["requestsPerSecond"]
            start = time.monotonic()
            while True:
                time.sleep(REPLAN_SECONDS)
                rate = round(planned_rate * load_factor(time.monotonic() - start), 1)
                cluster.patch(*api, "chat", {"spec": {"slo": {"requestsPerSecond": rate}}},
                              namespace=chat["metadata"]["namespace"])


# --- the workers -------------------------------------------------------------------------------------
@functools.cache
def metric(spec: catalogue.MetricSpec):
    """The prometheus-client object of a spec, for worker metrics no project module records yet."""
    import prometheus_client

    if spec.type == "histogram":
        return prometheus_client.Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets)
    kind = {"counter": prometheus_client.Counter, "gauge": prometheus_client.Gauge}[spec.type]
    return kind(spec.name, spec.help, spec.labels)


@dataclass
class Stage:
    name: str
    kind: str
    model: str | None
    draft_method: str | None
    fan_out: int
    hardware_class: str
    replicas: int
    predicted_s: float
    watts: float
    usd_per_hour: float


@dataclass
class Workflow:
    name: str
    target_s: float
    rate: float
    p50_s: float
    stages: list[Stage]

    @classmethod
    def from_object(cls, obj: dict) -> "Workflow":
        spec, plan = obj["spec"], obj["status"]["plan"]
        stages = []
        for stage in spec["stages"]:
            placed = plan["stages"][stage["name"]]
            draft = stage.get("speculativeDecoding") or {}
            stages.append(Stage(
                stage["name"], stage["kind"], stage.get("model"),
                draft.get("method", "draftHead") if draft.get("enabled", True) and draft else None,
                stage.get("fanOut", 1), placed["hardwareClass"], placed["replicas"],
                placed["predictedLatencyMs"] / 1000, placed["watts"], placed["usdPerHour"]))
        return cls(obj["metadata"]["name"], spec["slo"]["latencyMs"] / 1000,
                   max(1.0, spec["slo"]["requestsPerSecond"]), plan["predicted"]["latencyMsP50"] / 1000, stages)


class WorkerTraffic:
    def __init__(self, workflows: list[Workflow]) -> None:
        self.workflows = workflows
        # Rare events start at zero, so their series exist before the first one happens.
        for workflow in workflows:
            for stage in workflow.stages:
                metric(catalogue.WORKER_DEADLINE_MISSES).labels(workflow=workflow.name, stage=stage.name)
        for kind in SQL_ERROR_KINDS:
            metric(catalogue.WORKER_SQL_ERRORS).labels(kind=kind)

    def tick(self, load: float) -> None:
        for workflow in self.workflows:
            for _ in range(poisson(workflow.rate * load * TICK_SECONDS)):
                self.request(workflow, load)
            for stage in workflow.stages:
                self.replicas(workflow, stage, load)

    def request(self, workflow: Workflow, load: float) -> None:
        from tessera.workers.llm.metrics import record_generation

        latency = workflow.p50_s * load**1.2 * random.lognormvariate(0, 0.3)
        priority = random.choice(("0", "5"))
        late = latency > workflow.target_s
        outcome = "error" if random.random() < 0.005 else "deadline_missed" if late else "ok"
        labels = {"workflow": workflow.name, "priority": priority}
        metric(catalogue.WORKER_REQUESTS).labels(outcome=outcome, **labels).inc()
        metric(catalogue.WORKER_REQUEST_SECONDS).labels(**labels).observe(latency)
        if outcome == "ok":
            metric(catalogue.WORKER_SLO_MET).labels(**labels).inc()
        planned_total = sum(stage.predicted_s for stage in workflow.stages)
        elapsed = 0.0
        for stage in workflow.stages:
            seconds = latency * stage.predicted_s / planned_total
            if late and elapsed <= workflow.target_s < elapsed + seconds:
                metric(catalogue.WORKER_DEADLINE_MISSES).labels(workflow=workflow.name, stage=stage.name).inc()
            elapsed += seconds
            metric(catalogue.WORKER_STAGE_SECONDS).labels(
                workflow=workflow.name, stage=stage.name, hardware_class=stage.hardware_class).observe(seconds)
            metric(catalogue.WORKER_QUEUE_WAIT_SECONDS).labels(stage=stage.name, hardware_class=stage.hardware_class
                                                              ).observe(seconds * 0.3 * load * random.random())
            if stage.kind == "sql":
                metric(catalogue.WORKER_SQL_CANDIDATES).inc(stage.fan_out)
                if random.random() < 0.1:
                    metric(catalogue.WORKER_SQL_ERRORS).labels(kind=random.choice(SQL_ERROR_KINDS)).inc()
            if stage.model and stage.draft_method:
                drafted = stage.fan_out * random.randint(40, 80)
                accepted = sum(random.random() < 0.72 - 0.1 * (load - 1) for _ in range(drafted))
                steps = drafted // 4 + 1
                record_generation(stage.model, {
                    "generated_tokens": accepted + steps, "method": stage.draft_method, "drafted_tokens": drafted,
                    "accepted_tokens": accepted, "target_steps": steps, "draft_seconds": 0.002 * drafted,
                    "verify_seconds": 0.03 * steps})
            elif stage.model:
                record_generation(stage.model, {"generated_tokens": stage.fan_out * random.randint(20, 200)})

    def replicas(self, workflow: Workflow, stage: Stage, load: float) -> None:
        waiting = workflow.rate * load * stage.predicted_s * 0.15 * load / stage.replicas
        for index in range(min(stage.replicas, MAX_REPLICA_SERIES)):
            replica = f"{workflow.name}-{stage.name}-{index}"
            metric(catalogue.WORKER_QUEUE_DEPTH).labels(
                stage=stage.name, replica=replica, hardware_class=stage.hardware_class).set(poisson(waiting))
            labels = {"workflow": workflow.name, "stage": stage.name, "replica": replica,
                      "hardware_class": stage.hardware_class}
            metric(catalogue.WORKER_REPLICA_USD_PER_HOUR).labels(**labels).set(stage.usd_per_hour / stage.replicas)
            metric(catalogue.WORKER_REPLICA_WATTS).labels(**labels).set(
                stage.watts / stage.replicas * (0.5 + 0.5 * load) * random.uniform(0.95, 1.05))


def run_workers(port: int, plans_path: Path) -> None:
    import prometheus_client

    deadline = time.monotonic() + PLANS_TIMEOUT_SECONDS
    while not plans_path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no plans appeared in {plans_path} within {PLANS_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.2)
    traffic = WorkerTraffic([Workflow.from_object(obj) for obj in json.loads(plans_path.read_text())])
    traffic.tick(load_factor(0.0))
    prometheus_client.start_http_server(port, addr="127.0.0.1")
    start = time.monotonic()
    while True:
        time.sleep(TICK_SECONDS)
        traffic.tick(load_factor(time.monotonic() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("operator", "workers"), required=True, help="which component to run")
    parser.add_argument("--port", type=int, required=True, help="port of /metrics")
    parser.add_argument("--plans", type=Path, required=True, help="file the operator writes the planned workflows to")
    args = parser.parse_args()
    (run_operator if args.role == "operator" else run_workers)(args.port, args.plans)


if __name__ == "__main__":
    main()
