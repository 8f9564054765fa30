"""The pipeline with the real SmolLM2 model: in-process, through the benchmark, and on a local Ray Serve."""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request

import pytest

from tessera.workers.text2sql.sandbox import SQLSandbox

QUESTION = "List the names of all customers who live in Paris."
GOLD = "SELECT name FROM customers WHERE city = 'Paris'"


@pytest.mark.model
def test_the_direct_pipeline_answers_with_the_right_rows(llm_engine, t2s_dbs):
    from tessera.workers.text2sql.pipeline import DirectStages, Text2SQLPipeline, Text2SQLRequest

    db = t2s_dbs / "store.sqlite"
    pipeline = Text2SQLPipeline(DirectStages(llm_engine, t2s_dbs, n_candidates=2))
    answer = asyncio.run(pipeline.answer(Text2SQLRequest.make(QUESTION, db, slo_s=300)))
    out = answer.to_json()
    assert set(out) >= {"sql", "columns", "rows", "stages", "latencyMs"}
    assert [s["name"] for s in out["stages"]] == ["schema_linking", "candidate_generation", "execution",
                                                  "self_correction", "selection"]
    gold = SQLSandbox(db).execute(GOLD).result_key
    assert sorted(map(tuple, out["rows"])) == sorted(gold)
    assert out["sql"].upper().startswith("SELECT")


@pytest.mark.model
def test_the_benchmark_reports_both_accuracies_on_a_question_file(llm_engine, t2s_dbs, tmp_path):
    from tessera.cli import text2sql

    questions = tmp_path / "mine.json"
    questions.write_text(json.dumps([
        {"db": "store.sqlite", "question": QUESTION, "sql": GOLD},
        {"db": "library.sqlite", "question": "How many books are there?", "sql": "SELECT COUNT(*) FROM books"},
    ]))
    parser = argparse.ArgumentParser()
    text2sql.add_arguments(parser)
    args = parser.parse_args(["--questions", str(questions), "--db-dir", str(t2s_dbs), "--candidates", "1"])
    result = text2sql.run(args, engine=llm_engine)
    assert result["questions"] == 2
    assert {"singleShotAccuracy", "pipelineAccuracy", "stageLatencyMs", "refusedStatements"} <= set(result)
    assert 0.0 <= result["singleShotAccuracy"] <= 1.0
    assert result["pipelineAccuracy"] >= 0.5  # the first question is answered right (test above)
    assert result["stageLatencyMs"]["candidate_generation"]["mean"] > 0
    json.dumps(result)


@pytest.mark.model
@pytest.mark.ray
@pytest.mark.e2e
def test_the_example_workflow_answers_on_the_runtime_over_a_handle_and_over_http(serve_http_port, t2s_dbs):
    from ray import serve

    from tessera.api.serve import build_applications
    from tessera.api.workflow import DEFAULT_SERVE_IMPORT_PATH
    from tessera.cli.text2sql import local_workflow_args
    from tessera.workers.local import serve_applications

    db = t2s_dbs / "store.sqlite"
    flags = argparse.Namespace(candidates=2, policy="wb-urgency", alpha=0.3, priority=0, slo_ms=300_000)
    port = serve_http_port
    args = local_workflow_args(db, flags)
    args.workflow = "text2sql-test"
    handle = serve_applications(build_applications(args, DEFAULT_SERVE_IMPORT_PATH), http=True, localize=False)
    try:
        out = handle.answer.remote({"input": QUESTION, "priority": 2}).result(timeout_s=600)
        gold = SQLSandbox(db).execute(GOLD).result_key
        assert "error" not in out, out
        assert sorted(map(tuple, out["output"]["rows"])) == sorted(gold)
        stages = {s["name"]: s for s in out["stages"]}
        assert list(stages) == ["link-schema", "generate-candidates", "execute-candidates", "revise", "select"]
        assert stages["generate-candidates"]["attempts"] == 2 and out["priority"] == 2

        request = urllib.request.Request(f"http://127.0.0.1:{port}/text2sql-test", method="POST",
                                         data=json.dumps({"input": {"question": QUESTION}}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            over_http = json.loads(response.read())
        assert sorted(map(tuple, over_http["output"]["rows"])) == sorted(gold)

        empty = handle.answer.remote({"input": "  "}).result(timeout_s=60)
        assert empty["error"].startswith("stage 'link-schema' failed: ValueError: stage link-schema: input:")
    finally:
        for application in ("text2sql-test", "text2sql-test-models"):
            serve.delete(application)
