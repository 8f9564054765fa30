"""The Dockerfile agrees with the package and the chart (no Docker daemon is needed to check this)."""

from __future__ import annotations

import ast
import json
import re

import yaml

from .chartlib import CHART, REPO_ROOT

IMAGE_STAGES = ("operator", "workers")


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (instruction, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    result: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            current = arguments.split(" AS ")[-1].strip() if " AS " in arguments else arguments
            result[current] = []
        result[current].append((instruction.upper(), arguments.strip()))
    return result


def package_folders() -> list[str]:
    """setup.py's FOLDERS: the top-level folders that become tessera.<name>."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FOLDERS":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no FOLDERS")


def test_images_run_as_the_non_root_user_the_chart_expects():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid, gid = values["podSecurityContext"]["runAsUser"], values["podSecurityContext"]["runAsGroup"]
    for stage in IMAGE_STAGES:
        users = [arguments for instruction, arguments in stages()[stage] if instruction == "USER"]
        assert users and users[-1] == f"{uid}:{gid}", f"stage {stage} does not end as {uid}:{gid}"
    base = " ".join(arguments for instruction, arguments in stages()["base"] if instruction == "RUN")
    assert f"--uid {uid}" in base and f"--gid {gid}" in base


def test_images_build_on_a_slim_python():
    argument = next(a for i, a in stages()[""] if i == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.1[1-9]-slim(-\w+)?", argument)


def test_the_wheel_holds_every_package_folder():
    copied = {arguments.split()[0] for instruction, arguments in stages()["wheel"] if instruction == "COPY"}
    missing = set(package_folders()) - copied
    assert not missing, f"the Dockerfile does not copy {missing} into the wheel"
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert not ignored & set(package_folders())


def test_the_operator_image_starts_what_the_chart_starts():
    entrypoint = next(a for i, a in stages()["operator"] if i == "ENTRYPOINT")
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    command = re.search(r"command: (\[.*\])", deployment).group(1)
    assert json.loads(entrypoint) == json.loads(command)


def test_torch_is_pinned_and_only_in_the_workers_image():
    installs = {stage: " ".join(a for i, a in stages()[stage] if i == "RUN") for stage in IMAGE_STAGES}
    assert "torch==2.13.0" in installs["workers"]
    assert "torch" not in installs["operator"]
