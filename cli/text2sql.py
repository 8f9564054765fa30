"""``tessera text2sql``: answer a question about a SQLite database with the multi-stage pipeline.

Also the ``tessera bench text2sql`` benchmark (``add_arguments``/``run``): execution accuracy of
single-shot generation (the baseline) against the full pipeline, on the dev set or on yours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from tessera.cli.errors import UserError
from tessera.cli.ray_address import check_ray_address

POLICIES = ("rr-fcfs", "rr-urgency", "wb-fcfs", "wb-urgency")
EPILOG = """\
examples:
  tessera text2sql --db shop.sqlite --question "How many customers are there?" --direct
  tessera text2sql --db shop.sqlite --question "Which products cost more than 50?" -o json
  tessera text2sql --db shop.sqlite --serve --port 8000     # then POST {"input": "<question>"} to /text2sql
  python -m tessera.workers.text2sql.data.generate DIR       # builds the example databases into DIR
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "text2sql",
        help="answer a question about a SQLite database (schema linking, SQL candidates, execution, voting)",
        description="Translate a question into SQL with SmolLM2-135M and run it on a SQLite database, read-only. "
        "Stages: schema linking, candidate generation (grammar-constrained), execution in a sandbox, "
        "self-correction of failing candidates, selection by vote on execution results. By default the "
        "example workflow (examples/workflows/text2sql.yaml) runs on the workflow runtime on a local Ray, "
        "its stages reading --db; --direct runs the stages in this process.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", required=True, help="SQLite database file (opened read-only)")
    parser.add_argument("--question", help="the question, in English (not needed with --serve)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--direct", action="store_true", help="run the stages in this process, without Ray")
    mode.add_argument("--serve", action="store_true", help="keep the pipeline running behind an HTTP route")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port with --serve (default 8000)")
    parser.add_argument("--policy", choices=POLICIES, default="wb-urgency",
                        help="scheduling: dispatch (rr round-robin, wb workload-balanced) + replica queue "
                        "(fcfs or urgency); default wb-urgency")
    parser.add_argument("--alpha", type=float, default=0.2, help="speed-vs-load weight of wb dispatch, 0..1")
    parser.add_argument("--candidates", type=int, default=4, help="SQL candidates to generate (default 4)")
    parser.add_argument("--priority", type=int, default=0, help="request priority, higher is more urgent")
    parser.add_argument("--slo-ms", type=float, default=60000, help="the request's deadline in ms (default 60000)")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format")
    parser.set_defaults(handler=run_text2sql)


def _check_common(args: argparse.Namespace) -> Path:
    db = Path(args.db)
    if not db.is_file():
        raise UserError(f"--db: {db} is not a file")
    if not 1 <= args.candidates <= 16:
        raise UserError(f"--candidates: must be between 1 and 16, got {args.candidates}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha: must lie in [0, 1], got {args.alpha}")
    if args.slo_ms <= 0:
        raise UserError(f"--slo-ms: must be positive, got {args.slo_ms}")
    from tessera.workers.text2sql.sandbox import SQLSandbox

    try:
        SQLSandbox(db).schema()
    except Exception as err:  # not a database, or unreadable: say so in one line
        raise UserError(f"--db: {db} is not a readable SQLite database ({err})") from None
    return db


def run_text2sql(args: argparse.Namespace) -> int:
    db = _check_common(args)
    if not args.serve and not (args.question and args.question.strip()):
        raise UserError("--question: must be given and not empty (or use --serve)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.direct:
        answer = _answer_direct(db, args)
    else:
        answer = _answer_with_serve(db, args)
        if answer is None:
            return 0
    if args.output == "json":
        print(json.dumps(answer))
    else:
        _print_answer(answer)
    return 0


def _answer_direct(db: Path, args: argparse.Namespace) -> dict:
    import asyncio

    from tessera.workers.llm.engine import LLMEngine
    from tessera.workers.text2sql.data.generate import ensure_built
    from tessera.workers.text2sql.pipeline import DirectStages, Text2SQLPipeline, Text2SQLRequest

    stages = DirectStages(LLMEngine.load_default(), ensure_built(), n_candidates=args.candidates)
    request = Text2SQLRequest.make(args.question, db, args.slo_ms / 1000.0, args.priority)
    return asyncio.run(Text2SQLPipeline(stages).answer(request)).to_json()


def local_workflow_args(db: Path, args: argparse.Namespace):
    """The example Text-to-SQL workflow as the runtime's args for this machine: every stage reads ``db``,
    ``--candidates`` parallel candidate calls, the policy, priority and SLO from the flags."""
    import yaml

    from tessera.api import AgentWorkflow
    from tessera.api.serve import StageDeployment, WorkflowAppArgs
    from tessera.examples import example_path

    workflow = AgentWorkflow.model_validate(yaml.safe_load(example_path("workflows", "text2sql.yaml").read_text()))
    spec = workflow.spec
    for stage in spec.stages:
        if "database" in stage.params:
            stage.params["database"] = str(db.resolve())
        if stage.name == "generate-candidates":
            stage.fan_out = args.candidates
    spec.serve.policy = args.policy
    spec.serve.args = {"alpha": args.alpha}
    spec.priority = args.priority
    spec.slo.latency_ms = args.slo_ms
    # One replica per stage, all on this machine: a share of a CPU each (Serve's default of one whole CPU
    # per replica would leave the stages of a small machine waiting for CPUs forever); one model call at a time.
    deployments = {stage.name: StageDeployment(ray_actor_options={"num_cpus": 0.25},
                                               max_ongoing_requests=1 if stage.kind.value == "llm" else 8)
                   for stage in spec.stages}
    return WorkflowAppArgs(workflow="text2sql", spec=spec, deployments=deployments)


def _answer_with_serve(db: Path, args: argparse.Namespace) -> dict | None:
    import ray
    from ray import serve

    from tessera.api.serve import build_applications
    from tessera.api.workflow import DEFAULT_SERVE_IMPORT_PATH
    from tessera.workers.local import serve_applications

    check_ray_address()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        applications = build_applications(local_workflow_args(db, args), DEFAULT_SERVE_IMPORT_PATH)
        if args.serve:
            serve.start(http_options={"host": "127.0.0.1", "port": args.port})
            serve_applications(applications, http=True, localize=False)
            print(f"serving on http://127.0.0.1:{args.port}/text2sql  (POST {{\"input\": <question>}}; Ctrl-C stops)",
                  file=sys.stderr)
            while True:
                time.sleep(3600)
        handle = serve_applications(applications, localize=False)
        response = handle.answer.remote({"input": args.question.strip()}).result()
    finally:
        ray.shutdown()
    answer = response.get("output") or {"sql": "", "columns": [], "rows": [], "error": response.get("error")}
    return {**answer, "error": response.get("error") or answer.get("error"), "latencyMs": response["latencyMs"],
            "stages": [{"name": s["name"], "ms": s["ms"]} for s in response["stages"]]}


def _print_answer(answer: dict) -> None:
    print(answer["sql"])
    if answer.get("error"):
        print(f"error: {answer['error']}")
    print()
    rows = answer["rows"]
    if answer["columns"]:
        print(" | ".join(answer["columns"]))
        for row in rows[:20]:
            print(" | ".join("NULL" if v is None else str(v) for v in row))
        if len(rows) > 20:
            print(f"... {len(rows) - 20} more rows")
    print()
    print("  ".join(f"{s['name']} {s['ms']:.0f} ms" for s in answer["stages"]) + f"  total {answer['latencyMs']:.0f} ms")


# ----------------------------------------------------------------------------- benchmark
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Execution accuracy of single-shot generation (whole schema in the prompt, greedy, no examples: the "
        "baseline) against the full pipeline, per-stage latency, and refused or failed SQL statements. "
        "By default on the dev set (45 questions over three generated databases).")
    parser.add_argument("--questions", help="dev (default), validation (other databases, other wording), or a JSON "
                        "list of {\"db\": file in --db-dir, \"question\", \"sql\": gold}")
    parser.add_argument("--db-dir", help="folder of the databases (default: the generated dev databases)")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--candidates", type=int, default=4, help="pipeline SQL candidates per question (default 4)")
    parser.add_argument("--max-revisions", type=int, default=2, help="self-correction calls per question (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the model (default 2)")


def _load_questions(args: argparse.Namespace) -> tuple[list[dict], Path]:
    from tessera.workers.text2sql.data.generate import ensure_built
    from tessera.workers.text2sql.prompts import DATA_DIR

    db_dir = Path(args.db_dir) if args.db_dir else ensure_built()
    if not db_dir.is_dir():
        raise UserError(f"--db-dir: {db_dir} is not a folder")
    named = {"dev": DATA_DIR / "dev.json", "validation": DATA_DIR / "validation.json"}
    path = named.get(args.questions or "dev") or Path(args.questions)
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"--questions: cannot read {path} as JSON ({err})") from None
    if not isinstance(items, list) or not items:
        raise UserError("--questions: must be a non-empty JSON list")
    for i, item in enumerate(items):
        for key in ("db", "question", "sql"):
            if not isinstance(item, dict) or not isinstance(item.get(key), str) or not item[key].strip():
                raise UserError(f"--questions: [{i}].{key}: must be a non-empty string")
        if not (db_dir / item["db"]).is_file():
            raise UserError(f"--questions: [{i}].db: {item['db']} is not a file in {db_dir}")
    if args.limit is not None:
        if args.limit < 1:
            raise UserError(f"--limit: must be at least 1, got {args.limit}")
        items = items[: args.limit]
    return items, db_dir


def _summary(values: list[float]) -> dict:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "max": 0.0}
    return {"mean": round(statistics.fmean(values), 1), "p50": round(statistics.median(values), 1),
            "max": round(max(values), 1)}


def run(args: argparse.Namespace, engine=None) -> dict:
    """The benchmark's JSON; ``engine``: an LLMEngine already loaded (default: load SmolLM2-135M)."""
    if not 1 <= args.candidates <= 16:
        raise UserError(f"--candidates: must be between 1 and 16, got {args.candidates}")
    if args.threads < 1:
        raise UserError(f"--threads: must be at least 1, got {args.threads}")
    if not 0 <= args.max_revisions <= 8:
        raise UserError(f"--max-revisions: must be between 0 and 8, got {args.max_revisions}")
    items, db_dir = _load_questions(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import asyncio

    from tqdm import tqdm

    from tessera.workers.llm.engine import LLMEngine
    from tessera.workers.text2sql.data.generate import ensure_built
    from tessera.workers.text2sql.pipeline import DirectStages, Text2SQLPipeline, Text2SQLRequest
    from tessera.workers.text2sql.sandbox import SQLError, SQLSandbox, result_key

    engine = engine or LLMEngine.load_default(threads=args.threads)
    stages = DirectStages(engine, ensure_built(), n_candidates=args.candidates)
    pipeline = Text2SQLPipeline(stages, max_revisions=args.max_revisions)
    errors: dict[str, Counter] = {"singleShot": Counter(), "pipeline": Counter()}
    single_ok = pipe_ok = 0
    single_ms: list[float] = []
    pipe_ms: list[float] = []
    stage_ms: dict[str, list[float]] = {}
    executed = 0
    per_question = []
    for i, item in enumerate(tqdm(items, desc="text2sql", unit="question", file=sys.stderr)):
        db = str(db_dir / item["db"])
        try:
            gold = SQLSandbox(db).execute(item["sql"]).result_key
        except SQLError as err:
            raise UserError(f"--questions: [{i}].sql: the gold SQL fails ({err})") from None
        started = time.perf_counter()
        single = stages.executor.execute([stages.writer.write(stages.generator.single_shot_call(item["question"], db))],
                                         db)[0]
        single_ms.append((time.perf_counter() - started) * 1000)
        if single.error_kind:
            errors["singleShot"][single.error_kind] += 1
        single_correct = single.ok and single.result.result_key == gold
        answer = asyncio.run(pipeline.answer(Text2SQLRequest.make(item["question"], db, slo_s=600)))
        pipe_ms.append(answer.latency_ms)
        for stage in answer.stages:
            stage_ms.setdefault(stage["name"], []).append(stage["ms"])
        for cand in answer.candidate_sql:
            if cand["errorKind"]:
                errors["pipeline"][cand["errorKind"]] += 1
        executed += answer.candidates
        pipe_correct = answer.error is None and result_key([tuple(r) for r in answer.rows]) == gold
        single_ok += single_correct
        pipe_ok += pipe_correct
        per_question.append({"db": item["db"], "question": item["question"], "singleShotSql": single.sql,
                             "singleShotCorrect": single_correct, "pipelineSql": answer.sql,
                             "pipelineCorrect": pipe_correct, "candidates": answer.candidate_sql})
    n = len(items)
    all_errors = errors["singleShot"] + errors["pipeline"]
    return {
        "benchmark": "text2sql",
        "model": engine.name,
        "questions": n,
        "baseline": "single-shot: greedy, whole schema as CREATE TABLE, no examples, no grammar",
        "method": f"pipeline: lexical schema linking, {args.candidates} candidates constrained by an EBNF grammar "
                  "over the linked schema with rules from SQL and the schema (xgrammar), alternately narrowed to the "
                  "clauses the question cues and open, 2 greedy and the rest sampled, with 3 few-shot examples as chat "
                  "turns, sandboxed execution, up to "
                  f"{args.max_revisions} revisions, vote by execution result",
        "singleShotAccuracy": round(single_ok / n, 4),
        "pipelineAccuracy": round(pipe_ok / n, 4),
        "singleShotLatencyMs": _summary(single_ms),
        "pipelineLatencyMs": _summary(pipe_ms),
        "stageLatencyMs": {name: _summary(v) for name, v in stage_ms.items()},
        "candidatesExecuted": executed,
        "refusedStatements": all_errors.get("refused", 0),
        "failedStatements": sum(v for k, v in all_errors.items() if k != "refused"),
        "sqlErrorsByKind": {k: dict(v) for k, v in errors.items()},
        "perQuestion": per_question,
    }
