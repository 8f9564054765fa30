"""``tessera plan``: the JSON contract, the table, bad input and infeasible answers, the plot."""

from __future__ import annotations

import json

import pytest

from tessera.cli.main import main
from tessera.cli.plan import INFEASIBLE_EXIT

STAGE_KEYS = {"hardwareClass", "replicas", "tensorParallel", "predictedLatencyMs", "watts", "usdPerHour"}
PREDICTED_KEYS = {"latencyMsP50", "latencyMsAtSlo", "usdPerHour", "usdPer1kRequests", "watts"}


@pytest.fixture
def examples(repo_root):
    return repo_root / "examples"


def test_json_contract(examples, capsys):
    code = main(["plan", "-f", str(examples / "workflows" / "rag.yaml"), "-f", str(examples / "inventory"),
                 "-o", "json", "--solver", "exact"])
    out = capsys.readouterr().out
    assert code == 0
    plan = json.loads(out)
    assert {"feasible", "objective", "stages", "predicted", "bindingConstraints", "solveSeconds"} <= set(plan)
    assert plan["feasible"] is True and plan["objective"] == "tco"
    assert set(plan["stages"]) == {"retrieve", "rerank", "answer", "file-ticket"}
    for stage in plan["stages"].values():
        assert STAGE_KEYS <= set(stage)
        assert isinstance(stage["hardwareClass"], str) and stage["replicas"] >= 1 and stage["tensorParallel"] >= 1
        assert all(isinstance(stage[k], (int, float)) for k in ("predictedLatencyMs", "watts", "usdPerHour"))
    assert PREDICTED_KEYS <= set(plan["predicted"])
    assert plan["predicted"]["latencyMsAtSlo"] <= 4000
    assert isinstance(plan["bindingConstraints"], list) and isinstance(plan["solveSeconds"], float)


def test_every_example_answers_with_a_table(examples, capsys):
    code = main(["plan", "-f", str(examples / "workflows"), "-f", str(examples / "inventory")])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("text2sql:", "rag-assistant:", "chat:"):
        summary = [line for line in out.splitlines() if line.startswith(name)]
        assert len(summary) == 1 and "$" in summary[0] and "SLO" in summary[0]
    assert out.count("STAGE  ") == 3
    assert "generate-candidates" in out


def test_bad_input_gives_one_line_errors_and_exit_1(tmp_path, examples, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: tessera.dev/v1alpha1\nkind: AgentWorkflow\nmetadata: {name: bad}\n"
        "spec:\n  slo: {latencyMs: -5}\n  stages: [{name: a, kind: llm, model: llama-3-1-8b, inputTokens: 10, outputTokens: 5}]\n"
    )
    code = main(["plan", "-f", str(bad), "-f", str(examples / "inventory")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [f"{bad}: AgentWorkflow/bad: spec.slo.latencyMs: Input should be greater than 0"]


def test_missing_inventory_is_a_user_error(examples, capsys):
    assert main(["plan", "-f", str(examples / "workflows" / "chat.yaml")]) == 1
    assert "no HardwareClass found" in capsys.readouterr().err


def test_infeasible_plan_exits_3_and_says_why(tmp_path, examples, capsys):
    text = (examples / "workflows" / "rag.yaml").read_text().replace("latencyMs: 4000", "latencyMs: 50")
    tight = tmp_path / "tight.yaml"
    tight.write_text(text)
    code = main(["plan", "-f", str(tight), "-f", str(examples / "inventory"), "-o", "json"])
    plan = json.loads(capsys.readouterr().out)
    assert code == INFEASIBLE_EXIT
    assert plan["feasible"] is False and plan["stages"] == {} and plan["predicted"] is None
    assert plan["bindingConstraints"][0].startswith("SLO 50 ms unreachable: best p99 ")


def test_plot_draws_the_graph(tmp_path, examples, capsys):
    out = tmp_path / "plan.png"
    code = main(["plan", "-f", str(examples / "workflows" / "text2sql.yaml"), "-f", str(examples / "inventory"),
                 "--plot", str(out)])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
