"""``tessera demo``: the main job on one machine, no cluster.

For each example workflow (text2sql, rag-assistant, chat; ``--workflow`` picks one):

1. validate and plan it for the example heterogeneous inventory;
2. build its Serve applications exactly as the operator writes them into the RayService
   (``build_serve_config``: its model deployments, and the default workflow runtime) and run them
   on a local Ray where every planned hardware class is a custom resource (``tessera.workers.local``);
3. send a burst of requests with mixed priorities and deadlines, once with the workflow's own
   policy (urgency) and once with FCFS as the baseline: only the runtime is redeployed between the
   two, as a cluster would on a change of policy; the model deployments (and their loaded weights) stay;
4. report per priority: SLO attainment, p50 and p95, and whether the most urgent class did best.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from tessera.cli.errors import UserError
from tessera.examples import example_path

EXAMPLES = example_path()
DEFAULT_INVENTORY = EXAMPLES / "inventory"
WORKFLOW_FILES = {"text2sql": "text2sql.yaml", "rag-assistant": "rag.yaml", "chat": "chat.yaml"}
# (priority, deadline as a multiple of the burst's deadline unit): batch, normal and urgent requests. Every
# input goes once per class, in this order (an urgent request arrives behind the others), so the classes
# ask for the same work and differ only in where the policy puts them in the queues.
TRAFFIC_CLASSES = ((0, 4.0), (1, 2.0), (2, 1.0))
BASELINE_POLICY = "wb-fcfs"
DEFAULT_REQUESTS = 9
RAG_QUESTIONS = (
    "What does the operator write for each workflow?", "How does Tessera split a deadline across stages?",
    "Which command loads documents into a collection?", "What does the planner optimise?",
    "How are worker pods placed on hardware classes?", "What does a PowerBudget do?",
)
CHAT_PROMPTS = (
    "Name a primary colour.", "Say hello in French.", "What is two plus two?", "Name a planet.",
    "Give one word for happy.", "What comes after Monday?",
)


_STARTED = time.monotonic()


def say(message: str) -> None:
    """A progress line on stderr, with the seconds since the demo started."""
    print(f"[{time.monotonic() - _STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="plan the three example workflows, serve each on a local Ray, send bursts with mixed priorities",
        description="The whole pipeline on this machine: plan each example AgentWorkflow (text2sql, "
        "rag-assistant, chat) for the example heterogeneous inventory, run the Serve application the operator "
        "would deploy (the default workflow runtime; planned hardware classes become local Ray resources), send "
        "a burst of requests with three priorities and deadlines under the workflow's urgency policy and under "
        "FCFS, and print SLO attainment, p50 and p95 per priority. Takes about 3.5 minutes on 2 CPU cores.",
    )
    parser.add_argument("--workflow", choices=sorted(WORKFLOW_FILES), action="append", metavar="NAME",
                        help="run only this example (text2sql, rag-assistant or chat; repeatable; default: all three)")
    parser.add_argument("--inventory", default=str(DEFAULT_INVENTORY), metavar="PATH",
                        help="HardwareClasses, Nodes, ModelProfiles, PowerBudgets (default: the examples' inventory)")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, metavar="N",
                        help=f"requests per burst: N/3 inputs, each sent once per priority (a multiple of 3; "
                             f"default {DEFAULT_REQUESTS})")
    parser.add_argument("--no-baseline", action="store_true", help="skip the FCFS baseline bursts (faster)")
    parser.add_argument("--metrics-port", type=int, default=9091, metavar="PORT",
                        help="where the demo serves its Prometheus metrics (default 9091; 0: off)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the workflows serving with their own policy (HTTP on "
                             "127.0.0.1:8000/<workflow>) until Ctrl-C")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table",
                        help="table for people (default) or one JSON object with the figures")
    parser.set_defaults(handler=run)


def plan_example(workflow_path: str | Path, inventory_path: str):
    """(workflow, plan, hardware classes by name), or a UserError naming what is wrong."""
    from tessera.api import AgentWorkflow, HardwareClass, ModelProfile, PowerBudget
    from tessera.cli.documents import load
    from tessera.planner import Inventory, plan_workflow

    loaded = load([str(workflow_path), inventory_path])
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


def prepare_data(workflow) -> None:
    """What the example's stages read: the Text-to-SQL databases, the RAG collection (from files the package ships)."""
    from tqdm import tqdm

    for stage in workflow.spec.stages:
        database = stage.params.get("database")
        if isinstance(database, str):
            from tessera.workers.text2sql.data.generate import ensure_built

            ensure_built(Path(database).parent)
        if stage.retrieval is not None:
            from tessera.workers.retrieval import default_corpus, index_files

            files = default_corpus()
            with tqdm(desc=f"indexing {stage.retrieval.collection}", unit="passage", file=sys.stderr) as bar:
                index_files(files, stage.retrieval.collection, url=stage.retrieval.url, path=stage.retrieval.path,
                            progress=bar.update)


def dev_questions(database: str, count: int) -> list[dict]:
    """The first ``count`` dev-set questions about one database (question, gold SQL)."""
    import tessera.workers.text2sql.data as data

    items = [q for q in json.loads(Path(data.__file__).with_name("dev.json").read_text()) if q["db"] == Path(database).name]
    if not items:
        raise UserError(f"the dev set has no questions about {Path(database).name}")
    return [items[i % len(items)] for i in range(count)]


def database_of(workflow) -> str | None:
    """The SQLite file a Text-to-SQL workflow's stages read (``params.database``), if any."""
    return next((s.params["database"] for s in workflow.spec.stages if isinstance(s.params.get("database"), str)), None)


def inputs_for(workflow, count: int) -> list:
    """Dev-set questions for Text-to-SQL, questions about Tessera for RAG, short prompts for chat."""
    database = database_of(workflow)
    if database:
        return [q["question"] for q in dev_questions(database, count)]
    prompts = RAG_QUESTIONS if any(s.retrieval for s in workflow.spec.stages) else CHAT_PROMPTS
    return [prompts[i % len(prompts)] for i in range(count)]


def deadline_unit_ms(workflow, alone_ms: list[float]) -> float:
    """The most urgent class's deadline: the workflow's SLO, or, on a machine slower than the planned hardware,
    the time to serve that class first: each of its inputs as long as it took alone here, after the longest
    of them (a request of another class may be running when the burst's urgent ones arrive)."""
    slo_ms = workflow.spec.slo.deadline_ms or workflow.spec.slo.latency_ms
    return max(slo_ms, sum(alone_ms) + max(alone_ms))


def burst_bodies(inputs: list, unit_ms: float) -> list[dict]:
    """Each input once per traffic class, the classes interleaved."""
    return [{"input": value, "priority": priority, "deadlineMs": factor * unit_ms}
            for value in inputs for priority, factor in TRAFFIC_CLASSES]


def start_ray(class_names: set[str]) -> None:
    import ray

    from tessera.workers.local import local_class_resources

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A replica busy decoding on a 2-core machine answers the router's queue-length probe late; Serve's 0.1 s
    # default then warns on every burst, though the request is only routed a moment later.
    os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1.0")
    # Each stage replica here is a process asking a tenth of a CPU: a workflow starts about ten of them at once,
    # while the last one's go down. Ray's default lets one start per core and warns past 4x that.
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "8")
    # Always a Ray of this machine's own (each planned class is a local resource), whatever RAY_ADDRESS says.
    ray.init(address="local", num_cpus=os.cpu_count() or 2, resources=local_class_resources(sorted(class_names)),
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray import serve

    quiet = logging.getLogger("ray.serve")
    quiet.setLevel(logging.WARNING)  # deployment chatter; warnings (something wrong) still show
    serve.start(http_options={"host": "127.0.0.1"})
    quiet.setLevel(logging.WARNING)  # serve.start sets its own level


def workflow_applications(workflow, plan, classes, policy: str) -> list[dict]:
    """The applications the operator writes for ``workflow`` with ``policy`` (its models, then its runtime).
    Ray Serve LLM's, for GPU classes, is left out: localizing puts those models on Tessera's CPU engine."""
    from tessera.operator.builders import build_serve_config
    from tessera.operator.models import LLM_IMPORT_PATH

    changed = workflow.model_copy(deep=True)
    changed.spec.serve.policy = policy
    return [app for app in build_serve_config(changed, plan, classes)["applications"]
            if app["import_path"] != LLM_IMPORT_PATH]


def serve_applications(applications: list[dict], http: bool = False):
    """The applications running on the local Serve; the handle of the last one."""
    from tessera.workers.local import serve_applications as serve_locally

    try:
        return serve_locally(applications, http=http)
    except ValueError as err:  # the builders' args check: the workflow's spec is at fault
        raise UserError(f"{applications[-1]['name']}: {err}") from None


def accuracy(records: list[dict], questions: list[dict], database: str) -> float:
    """Execution accuracy of Text-to-SQL answers against the dev set's gold SQL (same rows, any order)."""
    from tessera.workers.text2sql.sandbox import SQLSandbox, result_key

    sandbox = SQLSandbox(database)
    correct = 0
    for record, item in zip(records, questions):
        rows = (record["answer"].get("output") or {}).get("rows") if not record["error"] else None
        if rows is not None:
            correct += result_key([tuple(r) for r in rows]) == result_key(sandbox.execute(item["sql"]).rows)
    return correct / len(records) if records else 0.0


def run_workflow(workflow, plan, classes, args) -> dict:
    from ray import serve

    from tessera.workers.runtime.bench import by_priority, send_burst

    inputs = inputs_for(workflow, args.requests // len(TRAFFIC_CLASSES))
    name = workflow.metadata.name
    bodies = None
    policies = [("urgency", workflow.spec.serve.policy)] + ([] if args.no_baseline else [("fcfs", BASELINE_POLICY)])
    result: dict = {"sloLatencyMs": workflow.spec.slo.latency_ms}
    *models, _runtime = workflow_applications(workflow, plan, classes, policies[0][1])
    say(f"{name}: loading its model deployments")
    serve_applications(models, http=args.keep_running)
    for label, policy in policies:
        # A change of policy updates the runtime in place, as Serve applies a rewritten serveConfigV2.
        say(f"{name}: serving with {policy}")
        runtime = workflow_applications(workflow, plan, classes, policy)[-1]
        handle = serve_applications([runtime], http=args.keep_running)
        if bodies is None:  # both policies get the same burst, its deadlines from each input alone
            say(f"{name}: timing each input alone (this also warms the runtime up)")
            # These calls also warm the runtime up; the first one's first-call costs only loosen the deadlines.
            result["aloneMs"] = [alone_ms(handle, value) for value in inputs]
            result["deadlineUnitMs"] = deadline_unit_ms(workflow, result["aloneMs"])
            bodies = burst_bodies(inputs, result["deadlineUnitMs"])
        else:
            alone_ms(handle, inputs[0])  # warm-up of the new runtime's replicas
        records = send_burst(handle, bodies, progress=f"  {name}, {policy}")
        result[label] = {"policy": policy, "byPriority": by_priority(records), **failures(records)}
        database = database_of(workflow)
        if database:
            questions = [q for q in dev_questions(database, len(inputs)) for _class in TRAFFIC_CLASSES]
            result[label]["executionAccuracy"] = accuracy(records, questions, database)
    if args.keep_running and policy != workflow.spec.serve.policy:  # it goes on serving as the operator deploys it
        serve_applications(workflow_applications(workflow, plan, classes, workflow.spec.serve.policy)[-1:], http=True)
    elif not args.keep_running:
        # The next workflow loads while these go down (a delete only stops actors; nothing waits on it).
        for application in (runtime, *models):
            serve.delete(application["name"], _blocking=False)
    result["checks"] = checks(result)
    return result


def failures(records: list[dict]) -> dict:
    """The burst's errors, apart from requests the runtime stopped because their deadline had passed
    (skipping work that can no longer meet it is the deadline-aware runtime doing its job)."""
    from tessera.workers.runtime.executor import DEADLINE_PASSED

    errors = [r["error"] for r in records if r["error"]]
    return {"errors": sorted({e for e in errors if DEADLINE_PASSED not in e})[:3],
            "stoppedPastDeadline": sum(DEADLINE_PASSED in e for e in errors)}


def alone_ms(handle, value) -> float:
    started = time.monotonic()
    handle.answer.remote({"input": value, "deadlineMs": 3_600_000}).result(timeout_s=900)
    return (time.monotonic() - started) * 1000.0


def checks(result: dict) -> dict:
    """The most urgent class has the lowest p50, and meets at least as many deadlines as under FCFS."""
    urgent = result["urgency"]["byPriority"]
    top = max(urgent, key=int)
    p50s = {p: row["p50Ms"] for p, row in urgent.items()}
    out = {"urgentHasLowestP50": p50s[top] == min(p50s.values())}
    if "fcfs" in result:
        out["urgentAttainmentAtLeastFcfs"] = urgent[top]["sloAttainment"] >= result["fcfs"]["byPriority"][top]["sloAttainment"]
    return out


def render_report(results: dict, metrics_url: str | None) -> str:
    lines = []
    for name, result in results["workflows"].items():
        alone = ", ".join(f"{ms / 1000:.1f}" for ms in result["aloneMs"])
        lines.append(f"\n{name} (SLO {result['sloLatencyMs'] / 1000:g} s; each input alone took {alone} s here; "
                     f"urgent deadline {result['deadlineUnitMs'] / 1000:.1f} s)")
        lines.append("policy      priority  deadline  requests  SLO attainment  p50        p95")
        for label in ("urgency", "fcfs"):
            if label not in result:
                continue
            for priority, row in result[label]["byPriority"].items():
                lines.append(f"{result[label]['policy']:<10}  {priority:>8}  {row['deadlineMs'] / 1000:>6.0f} s  "
                             f"{row['requests']:>8}  {row['sloAttainment']:>14.0%}  {row['p50Ms'] / 1000:>6.1f} s  "
                             f"{row['p95Ms'] / 1000:>6.1f} s")
            if "executionAccuracy" in result[label]:
                lines.append(f"{'':10}  execution accuracy {result[label]['executionAccuracy']:.0%}")
            for error in result[label]["errors"]:
                lines.append(f"{'':10}  error: {error}")
            if stopped := result[label].get("stoppedPastDeadline"):
                lines.append(f"{'':10}  {stopped} request{'s' if stopped > 1 else ''} stopped once past the "
                             "deadline (the runtime skips stages that can no longer meet it)")
        verdict = ", ".join(f"{check} {'yes' if ok else 'NO'}" for check, ok in result["checks"].items())
        lines.append(f"most urgent class: {verdict}")
    lines.append(f"\n{results['generatedTokens']} tokens generated, {results['sqlCandidatesExecuted']} SQL candidates "
                 f"executed (read-only, time-limited); {results['demoSeconds']:.0f} s in all")
    if metrics_url:
        lines.append(f"Prometheus metrics: {metrics_url}")
    return "\n".join(lines).lstrip("\n")


def run(args: argparse.Namespace) -> int:
    from tessera.cli.plan import render_table

    if args.requests < 3 or args.requests % 3:
        raise UserError(f"--requests: must be a multiple of 3 (each input once per priority), got {args.requests}")
    global _STARTED
    _STARTED = time.monotonic()
    names = args.workflow or list(WORKFLOW_FILES)
    say(f"1/4 planning {', '.join(names)} for the heterogeneous inventory")
    planned = {name: plan_example(EXAMPLES / "workflows" / WORKFLOW_FILES[name], args.inventory) for name in names}
    if args.output == "table":
        for name, (workflow, plan, _classes) in planned.items():
            print(render_table(name, workflow, plan))
    say("2/4 preparing the examples' data (databases, the RAG collection)")
    for workflow, _plan, _classes in planned.values():
        prepare_data(workflow)
    metrics_url = start_metrics(args.metrics_port)
    report, sys.stdout = sys.stdout, sys.stderr  # Ray prints its raylet's notices to stdout: only the report goes there
    try:
        start_ray({stage.hardware_class for _w, plan, _c in planned.values() for stage in plan.stages.values()})
        say("3/4 serving each workflow as the operator deploys it; a burst under urgency, then FCFS")
        results = {"workflows": {name: run_workflow(*planned[name], args) for name in names}}
        results.update(metric_figures())
        results["demoSeconds"] = time.monotonic() - _STARTED
        say("4/4 results")
        print(json.dumps(results) if args.output == "json" else render_report(results, metrics_url), file=report,
              flush=True)
        if args.keep_running:
            routes = ", ".join(f"http://127.0.0.1:8000/{name}" for name in names)
            print(f"serving {routes} (POST {{\"input\": ...}}); Ctrl-C stops", file=sys.stderr)
            while True:
                time.sleep(3600)
    finally:
        import ray

        ray.shutdown()  # without serve.shutdown(): its controller kill only prints retry noise
        sys.stdout = report
    return 0


def metric_figures() -> dict:
    """Figures the replicas recorded in Prometheus metrics (read back through the same exporter)."""
    from tessera.workers.metrics import sample_sum

    return {"sqlCandidatesExecuted": int(sample_sum("tessera_sql_candidates_executed_total")),
            "generatedTokens": int(sample_sum("tessera_llm_generated_tokens_total"))}


def start_metrics(port: int) -> str | None:
    """Every Ray worker process writes its metrics into one folder; the demo serves them all (multiprocess mode)."""
    import tempfile

    from tessera.workers.metrics import MULTIPROC_DIR_ENV, serve_metrics

    # Set before Ray starts, so that every replica process inherits it.
    os.environ[MULTIPROC_DIR_ENV] = tempfile.mkdtemp(prefix="tessera-demo-metrics-")
    return serve_metrics(port, addr="127.0.0.1") if port else None
