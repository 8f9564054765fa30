"""``tessera demo``: the main job on one machine, no cluster.

1. validate and plan the Text-to-SQL example for the example heterogeneous inventory;
2. build the Serve application exactly as the operator writes it into the RayService, and run it on
   a local Ray where every hardware class of the plan is a custom resource (``tessera.workers.local``);
3. send a burst of dev-set questions with mixed priorities and deadlines;
4. report SLO attainment per priority, execution accuracy, latency percentiles, the speculative
   acceptance rate, and where the Prometheus metrics are served.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tessera.cli.errors import UserError
from tessera.examples import example_path

EXAMPLES = example_path()
DEFAULT_WORKFLOW = EXAMPLES / "workflows" / "text2sql.yaml"
DEFAULT_INVENTORY = EXAMPLES / "inventory"
# (priority, deadline seconds): urgent interactive questions, normal ones, and batch work.
TRAFFIC_CLASSES = ((2, 60.0), (1, 120.0), (0, 240.0))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="plan the Text-to-SQL agent, serve it on a local Ray, send a burst of questions (no cluster)",
        description="The whole pipeline on this machine: plan the Text-to-SQL AgentWorkflow for the example "
        "heterogeneous inventory, start a local Ray Serve with the application the operator would deploy "
        "(the plan's hardware classes become local Ray resources), send a burst of dev-set questions with "
        "mixed priorities and deadlines, and print SLO attainment, accuracy, latencies and the speculative "
        "decoding acceptance rate. Takes a few minutes on 2 CPU cores.",
    )
    parser.add_argument("--workflow", default=str(DEFAULT_WORKFLOW), metavar="FILE",
                        help="the AgentWorkflow to plan and serve (default: the Text-to-SQL example)")
    parser.add_argument("--inventory", default=str(DEFAULT_INVENTORY), metavar="PATH",
                        help="HardwareClasses, Nodes, ModelProfiles, PowerBudgets (default: examples/inventory)")
    parser.add_argument("--questions", type=int, default=9, metavar="N", help="questions in the burst (default 9)")
    parser.add_argument("--metrics-port", type=int, default=9091, metavar="PORT",
                        help="where the demo serves its Prometheus metrics (default 9091; 0: off)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the application serving (HTTP on 127.0.0.1:8000/<workflow>) until Ctrl-C")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table",
                        help="table for people (default) or one JSON object with the figures")
    parser.set_defaults(handler=run)


def plan_example(workflow_path: str, inventory_path: str):
    """(workflow, plan, hardware classes by name), or a UserError naming what is wrong."""
    from tessera.api import AgentWorkflow, HardwareClass, ModelProfile, PowerBudget
    from tessera.cli.documents import load
    from tessera.planner import Inventory, plan_workflow

    loaded = load([workflow_path, inventory_path])
    if loaded.problems:
        raise UserError("invalid input:\n  " + "\n  ".join(loaded.problems))
    workflows = loaded.of_kind(AgentWorkflow)
    if len(workflows) != 1:
        raise UserError(f"{workflow_path}: expected one AgentWorkflow, found {len(workflows)}")
    workflow = workflows[0]
    classes = {hw.metadata.name: hw for hw in loaded.of_kind(HardwareClass)}
    inventory = Inventory.build(list(classes.values()), loaded.nodes, loaded.of_kind(PowerBudget),
                                loaded.of_kind(ModelProfile))
    plan = plan_workflow(workflow.spec, inventory)
    if not plan.feasible:
        raise UserError(f"{workflow.metadata.name} is infeasible: " + "; ".join(plan.binding_constraints))
    return workflow, plan, classes


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def dev_questions(db_name: str, count: int) -> list[dict]:
    """The first ``count`` dev-set questions about one database (question, gold SQL)."""
    import tessera.workers.text2sql.data as data

    dev_set = Path(data.__file__).with_name("dev.json")
    items = [q for q in json.loads(dev_set.read_text()) if q["db"] == db_name]
    if not items:
        raise UserError(f"the dev set has no questions about {db_name}")
    return [items[i % len(items)] for i in range(count)]


def gold_key(db_path: str, sql: str):
    from tessera.workers.text2sql.sandbox import SQLSandbox, result_key

    return result_key(SQLSandbox(db_path).execute(sql).rows)


def serve_application(application: dict, classes: list[str]):
    """Start a local Ray (the plan's classes as resources) and run the application; its ingress handle."""
    import ray
    from ray import serve

    from tessera.workers.local import build_application, local_class_resources

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=os.cpu_count() or 2, resources=local_class_resources(classes), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        app = build_application(application)
    except ValueError as err:  # the builder's args check: the workflow's spec.serve.args are at fault
        raise UserError(f"spec.serve.args: {err}") from None
    return serve.run(app, name=application["name"], route_prefix=application.get("route_prefix"))


def send_burst(handle, questions: list[dict]) -> list[dict]:
    """All questions at once, with mixed priorities and deadlines; one record per answer, in order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    def ask(i: int, item: dict) -> dict:
        priority, deadline_s = TRAFFIC_CLASSES[i % len(TRAFFIC_CLASSES)]
        started = time.monotonic()
        try:
            answer = handle.answer.remote(item["question"], priority, deadline_s).result(timeout_s=900)
            error = answer.get("error")
        except Exception as err:  # a failed request is counted, not fatal to the demo
            answer, error = {}, f"{type(err).__name__}: {err}"
        seconds = time.monotonic() - started
        return {"priority": priority, "deadlineS": deadline_s, "seconds": seconds, "answer": answer, "error": error,
                "metDeadline": error is None and seconds <= deadline_s and not answer.get("deadlineMissed")}

    records: list[dict | None] = [None] * len(questions)
    with ThreadPoolExecutor(max_workers=len(questions)) as pool, \
            tqdm(total=len(questions), desc="questions", unit="q", file=sys.stderr) as bar:
        futures = {pool.submit(ask, i, item): i for i, item in enumerate(questions)}
        for future in as_completed(futures):
            records[futures[future]] = future.result()
            bar.update(1)
    return [r for r in records if r is not None]


def summarize(records: list[dict], questions: list[dict], db_path: str) -> dict:
    from tessera.workers.text2sql.sandbox import result_key

    correct = 0
    for record, item in zip(records, questions):
        rows = record["answer"].get("rows")
        record["correct"] = rows is not None and not record["error"] and \
            result_key([tuple(r) for r in rows]) == gold_key(db_path, item["sql"])
        correct += record["correct"]
    by_priority = {}
    for priority, deadline_s in TRAFFIC_CLASSES:
        mine = [r for r in records if r["priority"] == priority]
        by_priority[str(priority)] = {
            "deadlineS": deadline_s, "requests": len(mine),
            "sloAttainment": sum(r["metDeadline"] for r in mine) / len(mine) if mine else None,
            "latencyP50S": percentile([r["seconds"] for r in mine], 50),
        }
    seconds = [r["seconds"] for r in records]
    stage_ms: dict[str, list[float]] = {}
    for record in records:
        for stage in record["answer"].get("stages", []):
            stage_ms.setdefault(stage["name"], []).append(stage["ms"])
    return {
        "questions": len(records),
        "executionAccuracy": correct / len(records) if records else 0.0,
        "errors": sum(1 for r in records if r["error"]),
        "byPriority": by_priority,
        "latencyP50S": percentile(seconds, 50),
        "latencyP95S": percentile(seconds, 95),
        "stageMeanMs": {name: sum(v) / len(v) for name, v in stage_ms.items()},
    }


def render_report(summary: dict, metrics_url: str | None) -> str:
    lines = [
        f"{summary['questions']} questions: execution accuracy {summary['executionAccuracy']:.0%}, "
        f"{summary['errors']} errors, latency p50 {summary['latencyP50S']:.1f} s, p95 {summary['latencyP95S']:.1f} s",
        "priority  deadline  requests  SLO attainment  p50",
    ]
    for priority, row in summary["byPriority"].items():
        attainment = "-" if row["sloAttainment"] is None else f"{row['sloAttainment']:.0%}"
        lines.append(f"{priority:>8}  {row['deadlineS']:>6.0f} s  {row['requests']:>8}  {attainment:>14}  "
                     f"{row['latencyP50S']:.1f} s")
    stages = ", ".join(f"{name} {ms:,.0f} ms" for name, ms in summary["stageMeanMs"].items())
    lines.append(f"mean per stage: {stages}")
    lines.append(f"{summary['generatedTokens']} tokens generated, {summary['sqlCandidatesExecuted']} SQL candidates "
                 "executed (read-only, time-limited)")
    if summary["specdecAcceptanceRate"] is not None:
        lines.append(f"speculative decoding: acceptance rate {summary['specdecAcceptanceRate']:.0%}, "
                     f"{summary['specdecTokensPerStep']:.2f} tokens per target step")
    else:
        lines.append("speculative decoding: no drafted tokens recorded")
    if metrics_url:
        lines.append(f"Prometheus metrics: {metrics_url}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tessera.cli.plan import render_table
    from tessera.operator.builders import build_serve_config
    from tessera.workers.local import localize_application
    from tessera.workers.text2sql.app import default_db_dirs

    if args.questions < 1:
        raise UserError(f"--questions: must be at least 1, got {args.questions}")
    started = time.monotonic()
    print("[1/4] planning the workflow for the heterogeneous inventory", file=sys.stderr)
    workflow, plan, classes = plan_example(args.workflow, args.inventory)
    print(render_table(workflow.metadata.name, workflow, plan))

    print("[2/4] starting a local Ray Serve with the application the operator deploys", file=sys.stderr)
    application = localize_application(build_serve_config(workflow, plan, classes)["applications"][0])
    used_classes = sorted({stage.hardware_class for stage in plan.stages.values()})
    metrics_url = start_metrics(args.metrics_port)
    db_path = str(default_db_dirs() / "store.sqlite")
    try:
        handle = serve_application(application, used_classes)
        print(f"[3/4] sending a burst of {args.questions} questions with mixed priorities and deadlines",
              file=sys.stderr)
        questions = dev_questions(Path(db_path).name, args.questions)
        records = send_burst(handle, questions)
        summary = summarize(records, questions, db_path)
        summary.update(metric_figures())
        summary["demoSeconds"] = time.monotonic() - started
        print("[4/4] results", file=sys.stderr)
        print(json.dumps(summary) if args.output == "json" else render_report(summary, metrics_url))
        if args.keep_running:
            print(f"serving on http://127.0.0.1:8000{application['route_prefix']} (POST {{\"question\": ...}}); "
                  "Ctrl-C stops", file=sys.stderr)
            while True:
                time.sleep(3600)
    finally:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return 0


def metric_figures() -> dict:
    """Figures the replicas recorded in Prometheus metrics (read back through the same exporter)."""
    from tessera.workers.metrics import sample_sum

    drafted = sample_sum("tessera_specdec_drafted_tokens_total")
    steps = sample_sum("tessera_specdec_target_steps_total")
    accepted = sample_sum("tessera_specdec_accepted_tokens_total")
    return {
        "sqlCandidatesExecuted": int(sample_sum("tessera_sql_candidates_executed_total")),
        "generatedTokens": int(sample_sum("tessera_llm_generated_tokens_total")),
        "specdecAcceptanceRate": accepted / drafted if drafted else None,
        "specdecTokensPerStep": (accepted + steps) / steps if steps else None,
    }


def start_metrics(port: int) -> str | None:
    """Every Ray worker process writes its metrics into one folder; the demo serves them all (multiprocess mode)."""
    import tempfile

    from tessera.workers.metrics import MULTIPROC_DIR_ENV, serve_metrics

    # Set before Ray starts, so that every replica process inherits it.
    os.environ[MULTIPROC_DIR_ENV] = tempfile.mkdtemp(prefix="tessera-demo-metrics-")
    return serve_metrics(port, addr="127.0.0.1") if port else None
