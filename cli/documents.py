"""Reading Kubernetes objects from YAML files and folders, with one-line problems instead of tracebacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tessera.api import ResourceError, parse_resource
from tessera.api.validation import describe

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Document:
    file: str
    body: Any


@dataclass
class Loaded:
    """Every object read, each parsed into its model, and every problem found on the way."""

    resources: list[tuple[str, Any]] = field(default_factory=list)  # (file, model)
    nodes: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def of_kind(self, model: type) -> list:
        return [res for _, res in self.resources if isinstance(res, model)]


def yaml_files(path: str) -> list[Path]:
    root = Path(path)
    if root.is_dir():
        return sorted(p for p in root.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
    return [root]


def read_documents(paths: list[str]) -> tuple[list[Document], list[str]]:
    docs: list[Document] = []
    problems: list[str] = []
    for path in paths:
        if not Path(path).exists():
            problems.append(f"{path}: no such file or folder")
            continue
        for file in yaml_files(path):
            try:
                bodies = list(yaml.safe_load_all(file.read_text()))
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                problems.append(f"{file}: YAML syntax error: {where}{problem}")
                continue
            except (OSError, UnicodeDecodeError) as err:
                problems.append(f"{file}: cannot read: {err}")
                continue
            for body in bodies:
                if body is None:
                    continue
                if isinstance(body, dict) and body.get("kind") == "List" and isinstance(body.get("items"), list):
                    docs += [Document(str(file), item) for item in body["items"]]
                else:
                    docs.append(Document(str(file), body))
    return docs, problems


def is_node(body: Any) -> bool:
    return isinstance(body, dict) and body.get("apiVersion") == "v1" and body.get("kind") == "Node"


def load(paths: list[str]) -> Loaded:
    """Parse every document; Nodes (for device counts) are kept as they are, after a shape check."""
    docs, problems = read_documents(paths)
    loaded = Loaded(problems=problems)
    for doc in docs:
        if is_node(doc.body):
            name = (doc.body.get("metadata") or {}).get("name")
            if not isinstance(name, str) or not name:
                loaded.problems.append(f"{doc.file}: Node/?: metadata.name: required")
            else:
                loaded.nodes.append(doc.body)
            continue
        try:
            loaded.resources.append((doc.file, parse_resource(doc.body)))
        except ResourceError as err:
            loaded.problems += [f"{doc.file}: {err.kind}/{err.name}: {problem}" for problem in err.problems]
    return loaded


__all__ = ["Document", "Loaded", "describe", "load", "read_documents"]
