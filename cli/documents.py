"""Reading Kubernetes objects from YAML files and folders, with one-line problems instead of tracebacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tessera.api import ResourceError, parse_resource
from tessera.api.validation import describe

YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 4 * 1024 * 1024  # etcd stores an object of at most 1.5 MiB; a file of several fits in 4
MAX_DEPTH = 64  # nesting levels of one document; Kubernetes objects go about a dozen deep
MAX_NODES = 1_000_000  # nodes of one document with every alias expanded ("billion laughs" stays out)


class InputTooLarge(ValueError):
    """A file beyond MAX_FILE_BYTES."""


class DocumentTooLarge(yaml.composer.ComposerError):
    """A document beyond MAX_DEPTH or MAX_NODES (a YAMLError, so it carries the line it was found at)."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` within MAX_DEPTH and MAX_NODES. Its composer recurses once per nesting level, so a
    deeper document would end in RecursionError; and aliases expand as often as they are used downstream."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        if self.depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise DocumentTooLarge(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self):
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_NODES:
            raise DocumentTooLarge(
                None, None, f"more than {MAX_NODES:,} values once its aliases are expanded", node.start_mark)
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes under ``node`` counting each alias as a copy; linear in the nodes (shared ones are counted once)."""
    if id(node) not in sizes:
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def read_yaml(file: Path) -> list[Any]:
    """The documents of one YAML file, within the limits above: InputTooLarge, yaml.YAMLError, OSError or
    UnicodeDecodeError otherwise (a device such as /dev/zero is read up to the limit, not to the end)."""
    with file.open("rb") as stream:
        data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InputTooLarge(f"larger than {MAX_FILE_BYTES // 2**20} MiB (a Kubernetes object is at most 1.5 MiB)")
    return list(yaml.load_all(data.decode("utf-8"), Loader=BoundedLoader))


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
                bodies = read_yaml(file)
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                label = "YAML document too large" if isinstance(err, DocumentTooLarge) else "YAML syntax error"
                problems.append(f"{file}: {label}: {where}{problem}")
                continue
            except (OSError, UnicodeDecodeError, InputTooLarge) as err:
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


__all__ = ["Document", "Loaded", "describe", "load", "read_documents", "read_yaml"]
