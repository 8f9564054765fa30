"""Small builders of workflow args with trivial stages, and an invoke that runs plain Python functions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from tessera.api.serve import StageDeployment, WorkflowAppArgs


def stage(name: str, deps: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
    return {"name": name, "kind": "transform", "implementation": "tessera.workers.runtime.builtins:identity",
            "measuredLatencyMs": 10, "dependsOn": list(deps), **fields}


def app_args(*stages: dict[str, Any], latency_ms: float = 10_000, predicted_ms: dict[str, float] | None = None,
             **spec: Any) -> WorkflowAppArgs:
    deployments = {name: StageDeployment(predicted_latency_ms=ms) for name, ms in (predicted_ms or {}).items()}
    return WorkflowAppArgs.model_validate({
        "workflow": "wf", "spec": {"stages": list(stages), "slo": {"latencyMs": latency_ms}, **spec},
        "deployments": {name: d.to_wire() for name, d in deployments.items()},
    })


class Recorder:
    """An invoke whose stages are plain functions ``fn(call) -> output`` (sync or async).

    Records every call (stage, call, sched) with start and end times.
    """

    def __init__(self, functions: dict[str, Callable[[dict], Any]] | None = None, delay_s: dict[str, float] | None = None):
        self.functions = functions or {}
        self.delay_s = delay_s or {}
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, stage: str, call: dict, sched: dict, on_token=None) -> Any:
        record = {"stage": stage, "call": call, "sched": sched, "start": time.monotonic()}
        self.calls.append(record)
        await asyncio.sleep(self.delay_s.get(stage, 0.0))
        fn = self.functions.get(stage, default_output)
        output = fn(call)
        if asyncio.iscoroutine(output):
            output = await output
        if on_token is not None:
            for piece in str(output).split():
                await on_token(piece)
        record["end"] = time.monotonic()
        return output

    def of(self, stage: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["stage"] == stage]


def default_output(call: dict) -> Any:
    """The stage's name and what it got from its dependencies, so a test can see the data flow."""
    return {"stage": call["stage"], "from": sorted(call["outputs"])}


@contextlib.contextmanager
def http_endpoint(answer: Callable[[str, dict, dict], tuple[int, Any]]):
    """A real local HTTP server: ``answer(path, headers, json_body) -> (status, json_answer)`` per POST.

    Yields its base URL; calls are served concurrently, each on its own thread.
    """
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, payload = answer(self.path, dict(self.headers), body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(payload).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
