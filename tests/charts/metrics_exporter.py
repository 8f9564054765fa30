"""Serves Tessera's metrics for the Prometheus end-to-end test: the operator's and the workers' /metrics.

``--role operator``: the real operator (kopf with Tessera's handlers) reconciles the example inventory
and workflows in kmock's emulated cluster (``tessera_devtools``, under tests/support) and serves its metrics with
``tessera.operator.metrics.serve``, as it does in its pod. A user keeps changing the chat workflow's
planned request rate in a one-minute sine wave, so the operator keeps replanning (cheaper, slower
hardware when fewer requests are expected). The workflows with their current plans are written to
``--plans`` after every change.

``--role workers``: synthetic requests that follow those plans (workflow names, SLOs, rates, stages,
hardware classes, replicas, latency at the SLO percentile, $/h and watts), recorded into the workers'
own metric objects: ``tessera.workers.llm.metrics.record_generation`` for the LLM figures,
``tessera.workers.metrics.make_metric`` for the others.

    python -P tests/charts/metrics_exporter.py --role operator --port 9101 --plans /tmp/plans.json
    python -P tests/charts/metrics_exporter.py --role workers --port 9102 --plans /tmp/plans.json
"""

from __future__ import annotations

import argparse
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
LATENCY_SIGMA = 0.3  # spread of a request's latency around the plan (log-normal)


def load_factor(now: float) -> float:
    """The chat workflow's planned request rate, relative to the example's: from 0.4 to 1.6 and back."""
    return 1.0 + 0.6 * math.sin(2 * math.pi * now / LOAD_PERIOD_SECONDS)


def poisson(mean: float) -> int:
    count, threshold, product = 0, math.exp(-mean), random.random()
    while product > threshold:
        count += 1
        product *= random.random()
    return count


# --- the operator ------------------------------------------------------------------------------------
def run_operator(port: int, plans_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # run as a script: add the dev harness
    from tessera.operator.metrics import serve
    from tessera_devtools import EXAMPLES, EmulatedCluster, OperatorRun
    from prometheus_client import REGISTRY
    from tessera_devtools.power import AgentThread, FakeNvml

    api = ("tessera.dev/v1alpha1", "agentworkflows")
    with EmulatedCluster(nodes=EmulatedCluster.example_nodes()) as cluster:
        cluster.apply_files(EXAMPLES / "inventory", EXAMPLES / "workflows")
        with OperatorRun(cluster):
            serve(port)  # what the operator's start-up does with TESSERA_METRICS_PORT
            # A power agent on one H100 node, drawing above T1 of a small budget: the controller caps it. Its
            # metrics go to the operator's port here (in a cluster, Prometheus scrapes each agent pod).
            AgentThread(cluster, "h100-sxm-node-0", FakeNvml([450, 450]), interval=1.0, registry=REGISTRY)
            cluster.create({"apiVersion": "tessera.dev/v1alpha1", "kind": "PowerBudget", "metadata": {"name": "rack-a"},
                            "spec": {"hardwareClasses": ["h100-sxm"], "provisionedWatts": 1000,
                                     "nodeSelector": {"kubernetes.io/hostname": "h100-sxm-node-0"}}})
            deadline = time.monotonic() + PLANS_TIMEOUT_SECONDS
            while True:
                workflows = cluster.list(*api)
                if all((wf.get("status") or {}).get("plan") for wf in workflows):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the operator planned no workflows within {PLANS_TIMEOUT_SECONDS:.0f} s")
                time.sleep(0.5)
            chat = next(wf for wf in workflows if wf["metadata"]["name"] == "chat")
            planned_rate = chat["spec"]["slo"]["requestsPerSecond"]
            start = time.monotonic()
            while True:
                write_plans(plans_path, workflows)
                time.sleep(REPLAN_SECONDS)
                rate = round(planned_rate * load_factor(time.monotonic() - start), 1)
                cluster.patch(*api, "chat", {"spec": {"slo": {"requestsPerSecond": rate}}},
                              namespace=chat["metadata"]["namespace"])
                workflows = cluster.list(*api)


def write_plans(path: Path, workflows: list[dict]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(workflows))
    partial.rename(path)  # atomic: the workers never read half a file


# --- the workers -------------------------------------------------------------------------------------
def metric(spec: catalogue.MetricSpec):
    """The workers' prometheus-client object of a spec, from the workers' own metrics module."""
    from tessera.workers.metrics import make_metric

    return make_metric(spec)


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
    at_slo_s: float
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
                   max(1.0, spec["slo"]["requestsPerSecond"]), plan["predicted"]["latencyMsAtSlo"] / 1000, stages)


class WorkerTraffic:
    """Requests at each workflow's planned rate, on the stages and replicas of its current plan."""

    def __init__(self, plans_path: Path) -> None:
        self.plans_path = plans_path
        self.plans_version = 0
        self.workflows: list[Workflow] = []
        self.refresh()
        # Rare events start at zero, so their series exist before the first one happens.
        for workflow in self.workflows:
            for stage in workflow.stages:
                metric(catalogue.WORKER_DEADLINE_MISSES).labels(workflow=workflow.name, stage=stage.name)
        for kind in SQL_ERROR_KINDS:
            metric(catalogue.WORKER_SQL_ERRORS).labels(kind=kind)

    def refresh(self) -> None:
        """Follow the operator's replanning: the file changes whenever it writes the plans again."""
        version = self.plans_path.stat().st_mtime_ns
        if version != self.plans_version:
            self.workflows = [Workflow.from_object(obj) for obj in json.loads(self.plans_path.read_text())]
            self.plans_version = version
            metric(catalogue.WORKER_QUEUE_DEPTH).clear()
            metric(catalogue.WORKER_REPLICA_USD_PER_HOUR).clear()
            metric(catalogue.WORKER_REPLICA_WATTS).clear()

    def tick(self) -> None:
        self.refresh()
        for workflow in self.workflows:
            for _ in range(poisson(workflow.rate * TICK_SECONDS)):
                self.request(workflow)
            for stage in workflow.stages:
                self.replicas(workflow, stage)

    def request(self, workflow: Workflow) -> None:
        from tessera.workers.llm.metrics import record_generation

        # Centred so that about 95 % of requests finish within the plan's latency at the SLO percentile.
        latency = workflow.at_slo_s * random.lognormvariate(-1.645 * LATENCY_SIGMA, LATENCY_SIGMA)
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
                                                              ).observe(seconds * 0.3 * random.random())
            if stage.kind == "sql":
                metric(catalogue.WORKER_SQL_CANDIDATES).inc(stage.fan_out)
                if random.random() < 0.1:
                    metric(catalogue.WORKER_SQL_ERRORS).labels(kind=random.choice(SQL_ERROR_KINDS)).inc()
            if stage.model and stage.draft_method:
                drafted = stage.fan_out * random.randint(40, 80)
                accepted = sum(random.random() < 0.72 for _ in range(drafted))
                steps = drafted // 4 + 1
                record_generation(stage.model, {
                    "generated_tokens": accepted + steps, "method": stage.draft_method, "drafted_tokens": drafted,
                    "accepted_tokens": accepted, "target_steps": steps, "draft_seconds": 0.002 * drafted,
                    "verify_seconds": 0.03 * steps})
            elif stage.model:
                record_generation(stage.model, {"generated_tokens": stage.fan_out * random.randint(20, 200)})

    def replicas(self, workflow: Workflow, stage: Stage) -> None:
        waiting = workflow.rate * stage.predicted_s * 0.15 / stage.replicas  # Little's law on the queueing share
        for index in range(min(stage.replicas, MAX_REPLICA_SERIES)):
            replica = f"{workflow.name}-{stage.name}-{index}"
            metric(catalogue.WORKER_QUEUE_DEPTH).labels(
                stage=stage.name, replica=replica, hardware_class=stage.hardware_class).set(poisson(waiting))
            labels = {"workflow": workflow.name, "stage": stage.name, "replica": replica,
                      "hardware_class": stage.hardware_class}
            metric(catalogue.WORKER_REPLICA_USD_PER_HOUR).labels(**labels).set(stage.usd_per_hour / stage.replicas)
            metric(catalogue.WORKER_REPLICA_WATTS).labels(**labels).set(
                stage.watts / stage.replicas * random.uniform(0.9, 1.1))


def run_workers(port: int, plans_path: Path) -> None:
    import prometheus_client

    deadline = time.monotonic() + PLANS_TIMEOUT_SECONDS
    while not plans_path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no plans appeared in {plans_path} within {PLANS_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.2)
    traffic = WorkerTraffic(plans_path)
    traffic.tick()
    prometheus_client.start_http_server(port, addr="127.0.0.1")
    while True:
        time.sleep(TICK_SECONDS)
        traffic.tick()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("operator", "workers"), required=True, help="which component to run")
    parser.add_argument("--port", type=int, required=True, help="port of /metrics")
    parser.add_argument("--plans", type=Path, required=True, help="file the operator writes the planned workflows to")
    args = parser.parse_args()
    (run_operator if args.role == "operator" else run_workers)(args.port, args.plans)


if __name__ == "__main__":
    main()
