"""What the chart tests share: the chart's paths and the real helm, promtool and prometheus binaries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "tessera"
RULES_FILE = CHART / "files" / "rules" / "tessera-rules.yaml"
DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
VALUE_SETS = sorted((Path(__file__).parent / "values").glob("*.yaml"))


def tool(name: str) -> str:
    """Path of a real binary; in CI (CI=true) a missing one fails the test instead of skipping it."""
    path = shutil.which(name) or shutil.which(name, path=str(REPO_ROOT / ".tools" / "bin"))
    if path:
        return path
    message = f"{name} is not installed (run `make tools`, or `bash .ci/tools.sh .tools`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_tool(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, query) for every panel target and every templating query of the shipped dashboards."""
    queries = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            queries += [(f"{path.name}: {panel['title']}: {target['legendFormat']}", target["expr"])
                        for target in panel["targets"]]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                queries.append((f"{path.name}: ${variable['name']}", variable["query"]["query"]))
    return queries


def rule_queries() -> list[tuple[str, str]]:
    return [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()]
