"""`tessera validate`: exit 0 on the examples; one line per problem, naming file, object, field and reason."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tessera.cli.main import main

REPO = Path(__file__).resolve().parents[2]

WF_HEAD = """\
apiVersion: tessera.dev/v1alpha1
kind: AgentWorkflow
metadata: {name: wf}
spec:
"""
OK_STAGES = """\
  slo: {latencyMs: 1000}
  stages:
    - {name: a, kind: llm, model: m, inputTokens: 10, outputTokens: 5}
"""

# Ten hand-made bad inputs: (file content, the one line expected after "FILE: ")
BAD_INPUTS = [
    ("key: [unclosed\n", "YAML syntax error: line 2"),
    (WF_HEAD.replace("tessera.dev/v1alpha1", "tessera.dev/v1") + OK_STAGES, "AgentWorkflow/wf: apiVersion: unsupported"),
    (WF_HEAD.replace("AgentWorkflow", "AgentFlow") + OK_STAGES, "AgentFlow/wf: kind: unknown kind 'AgentFlow'"),
    (WF_HEAD + OK_STAGES + "    - {name: b, kind: llm, model: m, inputTokens: 10, outputTokens: 5, dependsOn: [x]}\n",
     "AgentWorkflow/wf: spec.stages[1].dependsOn[0]: unknown stage 'x'"),
    (WF_HEAD + "  slo: {latencyMs: 1000}\n  stages:\n"
     "    - {name: a, kind: tool, implementation: m:f, measuredLatencyMs: 5, dependsOn: [b]}\n"
     "    - {name: b, kind: tool, implementation: m:f, measuredLatencyMs: 5, dependsOn: [a]}\n",
     "AgentWorkflow/wf: spec.stages: dependency cycle"),
    (WF_HEAD + OK_STAGES.replace("latencyMs: 1000", "latencyMs: 1000, percentile: 100"),
     "AgentWorkflow/wf: spec.slo.percentile: Input should be less than 100"),
    (WF_HEAD + OK_STAGES.replace("inputTokens: 10", "inputTokens: 0"),
     "AgentWorkflow/wf: spec.stages[0].inputTokens: Input should be greater than 0"),
    (WF_HEAD + OK_STAGES.replace("name: a,", "name: Gen_SQL,"),
     "AgentWorkflow/wf: spec.stages[0].name: 'Gen_SQL' is not a DNS-1123 label"),
    (WF_HEAD + OK_STAGES + "  placement: {allowedClasses: [h100], pinned: {a: l4}}\n",
     "AgentWorkflow/wf: spec.placement.pinned.a: class 'l4' is not in allowedClasses"),
    ("apiVersion: tessera.dev/v1alpha1\nkind: HardwareClass\nmetadata: {name: hw}\n"
     "spec: {vendor: X, generation: Y, peakTflops: {bf16: 10}, memoryGiB: 8, memoryBandwidthGBps: 100,"
     " tdpWatts: 100, idleWatts: 200, usdPerHour: 1}\n",
     "HardwareClass/hw: spec.idleWatts: must be lower than tdpWatts (100)"),
]


def test_examples_are_valid(capsys):
    assert main(["validate", "-f", str(REPO / "examples")]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("content,expected", BAD_INPUTS, ids=[f"bad{i}" for i in range(len(BAD_INPUTS))])
def test_bad_input_gives_one_line(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["validate", "-f", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: ") and expected in lines[0], lines[0]


def test_missing_path_is_reported(tmp_path, capsys):
    assert main(["validate", "-f", str(tmp_path / "nope.yaml")]) == 1
    assert "no such file or folder" in capsys.readouterr().out


def test_multi_document_and_folders(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "two.yaml").write_text(textwrap.dedent(WF_HEAD + OK_STAGES) + "---\n" + WF_HEAD + OK_STAGES)
    assert main(["validate", "-f", str(tmp_path)]) == 0
    assert "2 objects valid" in capsys.readouterr().err


def test_no_traceback_from_the_real_command(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    result = subprocess.run([sys.executable, "-m", "tessera.cli", "validate", "-f", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "?/?: expected a mapping, got list" in result.stdout
