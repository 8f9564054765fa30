"""What the chart tests share: the chart's paths and the real helm, promtool and prometheus binaries."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
