"""Implementations the examples name (``tessera.workers.runtime.builtins:<name>``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tessera.workers.runtime.context import StageContext

_append_lock = threading.Lock()


def identity(ctx: StageContext) -> Any:
    """The output of the only dependency (the list of them, by name, with several), else the request's input."""
    if len(ctx.outputs) == 1:
        return next(iter(ctx.outputs.values()))
    return dict(ctx.outputs) if ctx.outputs else ctx.input


def append_jsonl(ctx: StageContext) -> dict[str, Any]:
    """Appends ``{"input", "outputs"}`` as one JSON line to ``params.path``; returns ``{"path", "bytes"}``."""
    path = ctx.params.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError("params.path: required, the file to append to")
    line = json.dumps({"input": ctx.input, "outputs": ctx.outputs}, default=str) + "\n"
    with _append_lock, Path(path).open("a", encoding="utf-8") as file:
        file.write(line)
    return {"path": path, "bytes": len(line.encode())}
