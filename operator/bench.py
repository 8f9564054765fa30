"""``tessera bench operator``: many AgentWorkflows applied at once to an emulated cluster, until all are planned.

The emulated API server runs in its own process (``python -m tessera_devtools.cluster``), so that the
figures are the operator's: its wall time until every workflow has a Planned condition, the per-object
reconcile latency (the handler's own time, and creation to Planned), and its peak RSS. Baseline, measured
in the same run: the planner alone, i.e. the sum of the solve times the plans report; the rest of
``allPlannedSeconds`` is the operator's and the API's overhead.

The emulated cluster is development tooling, not part of the wheel: ``tests/support/tessera_devtools``
of a repository checkout, with the ``dev`` extra (kmock) installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from tessera.api import API_VERSION
from tessera.api.conditions import ConditionType, Reason, Status
from tessera.planner.stats import percentile

GOAL_SECONDS = 60
GOAL_RSS_MB = 500
API = API_VERSION
SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"  # the harness, in a repository checkout
NEEDS = ("tessera bench operator needs the emulated cluster of a repository checkout (tests/support) and kmock: "
         "run it from the checkout with `pip install -e '.[dev]'`")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflows", type=int, default=500, help="AgentWorkflows to apply at once (default: 500)")
    parser.add_argument("--node-copies", type=int, default=20,
                        help="copies of each example Node, so that the fleet has room for them all (default: 20)")
    parser.add_argument("--timeout", type=float, default=300, help="give up after this many seconds (default: 300)")


def bench_workflow(i: int) -> dict[str, Any]:
    """Workflow i: an LLM stage and a tool call, with a request rate and SLO that vary with i."""
    return {
        "apiVersion": API, "kind": "AgentWorkflow",
        "metadata": {"name": f"bench-{i:04d}", "namespace": "default"},
        "spec": {
            "priority": i % 3,
            "slo": {"latencyMs": 6000 + 500 * (i % 5), "percentile": 95, "requestsPerSecond": 1 + i % 4},
            "stages": [
                {"name": "answer", "kind": "llm", "model": "llama-3-1-8b", "inputTokens": 400 + 50 * (i % 7),
                 "outputTokens": 120},
                {"name": "act", "kind": "tool", "measuredLatencyMs": 100, "dependsOn": ["answer"],
                 "implementation": "tessera.workers.runtime.builtins:identity"},
            ],
        },
    }


def devtools() -> Any:
    """The development harness (``tessera_devtools``); one line and exit code 2 when it is not there."""
    if SUPPORT.is_dir() and str(SUPPORT) not in sys.path:
        sys.path.insert(0, str(SUPPORT))
    try:
        return importlib.import_module("tessera_devtools")
    except ImportError as err:
        print(f"error: {NEEDS} ({err})", file=sys.stderr)
        raise SystemExit(2) from None


def _inventory(node_copies: int, examples: Path) -> list[dict[str, Any]]:
    import yaml

    docs = []
    for name in ("hardware-classes.yaml", "model-profiles.yaml", "power-budget.yaml"):
        docs += [d for d in yaml.safe_load_all((examples / "inventory" / name).read_text()) if d]
    for doc in docs:  # the budget grows with the fleet
        if doc["kind"] == "PowerBudget":
            doc["spec"]["provisionedWatts"] *= node_copies
    return docs


def _planned_condition(body: dict[str, Any]) -> dict[str, Any] | None:
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return None
    return next((c for c in status.get("conditions", []) if c["type"] == ConditionType.planned), None)


def _percentile(values: list[float], q: float) -> float:
    """0 for no values: the bench's JSON keeps numbers where a run planned nothing."""
    return percentile(values, q, method="nearest") or 0.0


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    tools = devtools()
    logging.getLogger().setLevel(logging.WARNING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-P", "-m", "tessera_devtools.cluster", "--node-copies",
                               str(args.node_copies)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        line = server.stdout.readline() if server.stdout else ""
        if not line:
            raise RuntimeError("the emulated API server did not start")
        info = json.loads(line)
        cluster = tools.ClusterClient(info["url"], Path(info["kubeconfig"]))
        for doc in _inventory(args.node_copies, tools.EXAMPLES):
            cluster.create(doc)
        workflows = [bench_workflow(i) for i in range(args.workflows)]
        with tools.OperatorRun(cluster) as operator:
            started = time.time()
            with ThreadPoolExecutor(8) as pool:  # "at once": as fast as the API server takes them
                list(pool.map(cluster.create, workflows))
            applied = time.time() - started
            done: dict[str, dict[str, Any]] = {}
            with tqdm(total=len(workflows), desc="planned", unit="workflow", file=sys.stderr) as progress:
                while len(done) < len(workflows):
                    if time.time() - started > args.timeout:
                        break
                    time.sleep(0.5)
                    for body in cluster.list(API, "agentworkflows", "default"):
                        name = body["metadata"]["name"]
                        cond = _planned_condition(body)
                        if name not in done and cond is not None:
                            done[name] = {"body": body, "seen": time.time()}
                    progress.update(len(done) - progress.n)
            all_planned = max((d["seen"] for d in done.values()), default=time.time()) - started
            latencies = list(operator.state.latencies)
            queued = list(operator.state.queued_seconds)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(30)

    bodies = [d["body"] for d in done.values()]
    feasible = [b for b in bodies if _planned_condition(b)["status"] == Status.true]
    invalid = [b for b in bodies if _planned_condition(b)["reason"] == Reason.invalid_spec]
    solve_total = sum((b["status"].get("plan") or {}).get("solveSeconds", 0.0) for b in bodies)
    created_to_planned = [d["seen"] - _seconds(d["body"]["metadata"]["creationTimestamp"]) for d in done.values()]
    return {
        "benchmark": "operator",
        "workflows": len(workflows),
        "planned": len(feasible),
        "infeasible": len(bodies) - len(feasible) - len(invalid),
        "invalid": len(invalid),
        "unfinished": len(workflows) - len(bodies),
        "applySeconds": round(applied, 2),
        "allPlannedSeconds": round(all_planned, 2),
        "reconciles": len(latencies),
        "reconcileP50Ms": round(_percentile(latencies, 50) * 1000, 1),
        "reconcileP99Ms": round(_percentile(latencies, 99) * 1000, 1),
        "reconcileQueuedP99Ms": round(_percentile(queued, 99) * 1000, 1),  # waiting for the planner's turn
        "reconcileWorkP99Ms": round(_percentile([a - b for a, b in zip(latencies, queued)], 99) * 1000, 1),
        "createdToPlannedP99Seconds": round(_percentile(created_to_planned, 99), 2),
        "rssMB": round(rss_mb, 1),
        "baseline": {
            "name": "planner alone: the sum of the plans' solve times",
            "seconds": round(solve_total, 2),
            "operatorOverheadSeconds": round(all_planned - solve_total, 2),
        },
        "goal": {"allPlannedSeconds": GOAL_SECONDS, "rssMB": GOAL_RSS_MB,
                 "met": len(feasible) == len(workflows) and all_planned <= GOAL_SECONDS and rss_mb < GOAL_RSS_MB},
        "note": "2-core machine shared with other work: timings are noisy",
    }
