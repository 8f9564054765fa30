"""Bad input to the CLI, the benchmark and the app builder gets one line naming the field."""

from __future__ import annotations

import json

import pytest

from tessera.cli.main import main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_missing_database_is_named(capsys, tmp_path):
    assert main(["text2sql", "--db", str(tmp_path / "none.sqlite"), "--question", "How many?", "--direct"]) == 1
    assert "--db" in one_line_error(capsys)


def test_a_file_that_is_no_database_is_named(capsys, tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    assert main(["text2sql", "--db", str(junk), "--question", "How many?", "--direct"]) == 1
    assert "not a readable SQLite database" in one_line_error(capsys)


def test_an_empty_question_is_named(capsys, t2s_dbs):
    assert main(["text2sql", "--db", str(t2s_dbs / "store.sqlite"), "--question", "  ", "--direct"]) == 1
    assert "--question" in one_line_error(capsys)


@pytest.mark.parametrize("content,field", [("[]", "non-empty JSON list"), ("{bad", "cannot read"),
                                           ('[{"db": "store.sqlite", "question": "q"}]', "[0].sql"),
                                           ('[{"db": "nope.sqlite", "question": "q", "sql": "SELECT 1"}]', "[0].db")])
def test_the_benchmark_names_what_is_wrong_with_a_question_file(capsys, tmp_path, t2s_dbs, content, field):
    questions = tmp_path / "q.json"
    questions.write_text(content)
    assert main(["bench", "text2sql", "--questions", str(questions), "--db-dir", str(t2s_dbs)]) == 1
    assert field in one_line_error(capsys)


@pytest.mark.parametrize("args,field", [({"policy": "fastest"}, "policy"), ({"alpha": 2}, "alpha"),
                                        ({"stages": {"nowhere": {}}}, "nowhere"),
                                        ({"stageMap": {"ranking": "x"}}, "stageMap"),
                                        ({"stageMap": {"execution": "run-sql"}, "stages": {"other": {}}}, "run-sql"),
                                        ({"stages": {"execution": {"replicas": 0}}}, "stages.execution.replicas"),
                                        ({"colour": "red"}, "colour")])
def test_the_app_builder_validates_its_args(args, field):
    from tessera.workers.text2sql.app import parse_args

    with pytest.raises(ValueError) as err:
        parse_args(args)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_the_app_builder_reads_the_operator_args():
    from tessera.workers.text2sql.app import parse_args

    cfg = parse_args({"policy": "rr-fcfs", "stageMap": {"candidate_generation": "generate-candidates"},
                      "stages": {"generate-candidates": {"hardwareClass": "a100", "replicas": 2,
                                                         "rayActorOptions": {"num_gpus": 1}},
                                 "unit-tester": {"hardwareClass": "l40s"}},  # a workflow stage without a deployment
                      "slo": {"latencyMs": 40000, "deadlineMs": 50000}, "priority": 3, "workflow": "t2s",
                      "namespace": "team-a"})
    assert cfg.stage("candidate_generation").hardware_class == "a100"
    assert cfg.stage("candidate_generation").replicas == 2
    assert cfg.stage("execution").replicas == 1
    assert cfg.slo_s() == 50.0 and cfg.priority == 3
    assert json.loads(cfg.model_dump_json(by_alias=True))["stageMap"] == {"candidate_generation": "generate-candidates"}
