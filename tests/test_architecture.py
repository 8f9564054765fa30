"""DESIGN.md's import rules, and the operator/ folder never shadowing the standard library."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


LAYER_FOLDERS = ["api", "cli", "planner", "workers", "operator", "sim"]


def test_import_contracts_hold(tmp_path):
    # import-linter needs `tessera` as a real folder; the editable install maps it from several.
    package = tmp_path / "tessera"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for folder in LAYER_FOLDERS:
        shutil.copytree(REPO / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__", "*.gguf", "*.db"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(REPO / "pyproject.toml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def test_stdlib_operator_works_from_repo_root():
    result = subprocess.run(
        [sys.executable, "-c", "import json, operator; operator.add; print(operator.__file__)"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not result.stdout.strip().startswith(str(REPO / "operator"))


def test_tessera_operator_is_the_repo_folder():
    import tessera.operator

    assert Path(tessera.operator.__file__).resolve().parent == REPO / "operator"
