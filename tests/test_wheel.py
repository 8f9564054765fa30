"""The built wheel works on its own: installed into a fresh venv and run outside the checkout, the CLI
finds the examples it ships as package data (``tessera.examples``).

Fast and offline: the wheel is built without build isolation, installed with ``--no-deps``, and the
fresh venv sees the dependencies of the development venv through a ``.pth`` line (a path line only:
the development venv's own ``.pth`` files, among them the editable install's finder, are not run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_LEFT_OUT = {"tests", "build", "dist", "out"}

pytestmark = pytest.mark.timeout(120)


def _source_copy(target: Path) -> Path:
    """The working tree without VCS, venvs, caches and tests: what an sdist would hold."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        left_out = {n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith(".egg-info")}
        return left_out | (TOP_LEVEL_LEFT_OUT & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, target, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from this tree installed in it; returns its root."""
    work = tmp_path_factory.mktemp("wheel")
    source = _source_copy(work / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(work / "dist"), str(source)], check=True, capture_output=True, timeout=90)
    (wheel,) = (work / "dist").glob("tessera_operator-*.whl")
    root = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=60)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=90)
    site_packages = Path(subprocess.run(
        [root / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True).stdout.strip())
    dev_paths = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site_packages / "dependencies-of-the-dev-venv.pth").write_text("\n".join(dev_paths) + "\n")
    return root


def _run(venv: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([*args], cwd=venv, env=env, capture_output=True, text=True, timeout=60)


def test_the_installed_package_is_the_wheel_not_the_checkout(venv):
    result = _run(venv, str(venv / "bin" / "python"), "-c",
                  "import tessera.cli, tessera.examples; print(tessera.cli.__file__); "
                  "print(tessera.examples.example_path('inventory'))")
    assert result.returncode == 0, result.stderr
    cli_file, inventory = result.stdout.split()
    assert Path(cli_file).is_relative_to(venv), cli_file
    assert Path(inventory).is_relative_to(venv) and sorted(p.name for p in Path(inventory).glob("*.yaml")) == [
        "hardware-classes.yaml", "model-profiles.yaml", "nodes.yaml", "power-budget.yaml"]


def test_demo_help(venv):
    result = _run(venv, str(venv / "bin" / "tessera"), "demo", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tessera demo") and "--workflow" in result.stdout


def test_plan_the_shipped_examples(venv):
    examples = next((venv / "lib").glob("python*/site-packages/tessera/examples"))
    result = _run(venv, str(venv / "bin" / "tessera"), "plan", "-o", "json",
                  "-f", str(examples / "workflows" / "text2sql.yaml"), "-f", str(examples / "inventory"))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["feasible"] and "generate-candidates" in plan["stages"]


def test_simulate_with_the_default_inventory(venv):
    result = _run(venv, str(venv / "bin" / "tessera"), "simulate", "--scenario", "hexgen", "--requests", "200")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] == 200
    assert [r["policy"] for r in report["results"]] == ["rr-fcfs", "rr-urgency", "wb-fcfs", "wb-urgency", "ef-urgency"]
