"""Hostile or broken input to the CLI ends in one line naming the input and the reason, within seconds:
no traceback, no hang."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest

from tessera.cli.main import main
from tessera.examples import example_path

INVENTORY = str(example_path("inventory"))
WORKFLOW = example_path("workflows", "text2sql.yaml")


def one_line(capsys, argv: list[str]) -> str:
    started = time.monotonic()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 1 and time.monotonic() - started < 20
    lines = (err + out).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_deeply_nested_yaml(tmp_path, capsys):
    file = tmp_path / "deep.yaml"
    file.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert one_line(capsys, ["validate", "-f", str(file)]) == (
        f"{file}: YAML document too large: line 1, column 67: nested deeper than 64 levels")


def test_aliases_that_expand_exponentially(tmp_path, capsys):
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    file = tmp_path / "laughs.yaml"
    file.write_text("\n".join(rows) + "\n")
    assert "more than 1,000,000 values once its aliases are expanded" in one_line(capsys, ["validate", "-f", str(file)])


def test_endless_file(capsys):
    assert one_line(capsys, ["validate", "-f", "/dev/zero"]) == "/dev/zero: cannot read: larger than 4 MiB " \
        "(a Kubernetes object is at most 1.5 MiB)"


@pytest.mark.parametrize("value, reason", [(".inf", "Input should be a finite number"), (".nan", "Input should be a finite number"),
                                           ("1e308", "Input should be less than or equal to 1000000")])
def test_request_rate_that_is_not_a_finite_number(tmp_path, capsys, value, reason):
    file = tmp_path / "wf.yaml"
    text = WORKFLOW.read_text()
    assert "requestsPerSecond:" in text
    file.write_text("\n".join(
        line.split(":")[0] + f": {value}" if line.strip().startswith("requestsPerSecond:") else line
        for line in text.splitlines()))
    assert one_line(capsys, ["plan", "-f", str(file), "-f", INVENTORY]) == (
        f"{file}: AgentWorkflow/text2sql: spec.slo.requestsPerSecond: {reason}")


def test_unwritable_plot_path(tmp_path, capsys):
    target = tmp_path / "missing-folder" / "plan.png"
    code = main(["plan", "-f", str(WORKFLOW), "-f", INVENTORY, "--plot", str(target)])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines() == [f"error: {target}: No such file or directory"]


def test_unreachable_ray_address(tmp_path, capsys, monkeypatch):
    db = tmp_path / "shop.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    line = one_line(capsys, ["text2sql", "--db", str(db), "--question", "How many rows?"])
    assert line.startswith(f"error: RAY_ADDRESS='127.0.0.1:{port}': cannot reach the Ray cluster")


@pytest.mark.model
def test_missing_model_file(tmp_path, capsys):
    missing = tmp_path / "draft.gguf"
    code = main(["bench", "specdec", "--prompts", "1", "--max-new-tokens", "2", "--methods", "draft_model",
                 "--draft-model", str(missing)])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines()[-1] == f"error: bench specdec: speculative.model path {missing} does not exist"
    assert "Traceback" not in err
