"""Random workflows and inventories for the planner's benchmark and property tests (seeded, reproducible)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import yaml

from tessera.api import AgentWorkflowSpec, HardwareClass, ModelProfile, PowerBudget, parse_resource
from tessera.api.workflow import Objective
from tessera.examples import example_path
from tessera.planner.inventory import Inventory, PowerGroup

EXAMPLES = example_path()


def load_examples(path: Path) -> list:
    """Tessera objects (and Node dicts) from a folder of YAML, e.g. examples/inventory."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder")
    out = []
    for file in sorted(path.rglob("*.yaml")):
        for body in yaml.safe_load_all(file.read_text()):
            if body is None:
                continue
            out.append(body if body.get("kind") == "Node" else parse_resource(body))
    return out


def example_inventory(folder: Path = EXAMPLES / "inventory", **overrides) -> Inventory:
    objects = load_examples(folder)
    return Inventory.build(
        [o for o in objects if isinstance(o, HardwareClass)], [o for o in objects if isinstance(o, dict)],
        [o for o in objects if isinstance(o, PowerBudget)], [o for o in objects if isinstance(o, ModelProfile)],
        **overrides,
    )


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def random_workflow(rng: random.Random, n_stages: int, models: list[str], slo_ms: float = 60_000,
                    requests_per_second: float | None = None) -> AgentWorkflowSpec:
    """A random DAG: mostly LLM calls of the given models, some retrieval/tool/sql/transform stages."""
    stages = []
    for i in range(n_stages):
        name = f"s{i:03d}"
        earlier = [f"s{j:03d}" for j in range(max(0, i - 6), i)]
        deps = sorted({d for d in earlier if rng.random() < 0.3} | ({rng.choice(earlier)} if earlier else set()))
        if rng.random() < 0.65:
            stage = {"name": name, "kind": "llm", "model": rng.choice(models),
                     "inputTokens": int(_log_uniform(rng, 100, 8000)), "outputTokens": int(_log_uniform(rng, 4, 600)),
                     "fanOut": rng.choice([1, 1, 1, 2, 4])}
        elif rng.random() < 0.5:
            stage = {"name": name, "kind": rng.choice(["tool", "sql"]), "measuredLatencyMs": _log_uniform(rng, 5, 400)}
        else:
            stage = {"name": name, "kind": rng.choice(["retrieval", "transform"]),
                     "gflops": _log_uniform(rng, 0.5, 500), "megabytes": _log_uniform(rng, 10, 2000)}
        stage["dependsOn"] = deps
        stage["payloadKB"] = _log_uniform(rng, 1, 256)
        stages.append(stage)
    rate = requests_per_second if requests_per_second is not None else _log_uniform(rng, 0.2, 4)
    return AgentWorkflowSpec.model_validate({
        "stages": stages, "slo": {"latencyMs": slo_ms, "percentile": rng.choice([90, 95, 99]), "requestsPerSecond": rate},
    })


def random_inventory(rng: random.Random, base: Inventory, n_classes: int, power: bool,
                     device_counts: tuple[int, ...] = (2, 4, 8, 16)) -> Inventory:
    """A random subset of the base's classes with random device counts, and maybe a tight power budget."""
    names = sorted(rng.sample(sorted(base.classes), n_classes))
    devices = {name: rng.choice(device_counts) for name in names}
    groups: tuple[PowerGroup, ...] = ()
    if power:
        tdp = sum(base.classes[n].tdp_watts * devices[n] for n in names)
        provisioned = tdp * rng.uniform(0.2, 0.8)
        over = rng.choice([0.0, 30.0])
        groups = (PowerGroup("random-budget", frozenset(names), provisioned * (1 + over / 100), provisioned, 0.6,
                             provisioned, over),)
    return Inventory(classes={n: base.classes[n] for n in names}, free_devices=devices, total_devices=dict(devices),
                     power_groups=groups, model_profiles=dict(base.model_profiles))


def with_slo(spec: AgentWorkflowSpec, latency_ms: float, objective: Objective | None = None) -> AgentWorkflowSpec:
    slo = spec.slo.model_copy(update={"latency_ms": latency_ms})
    placement = spec.placement if objective is None else spec.placement.model_copy(update={"objective": objective})
    return spec.model_copy(update={"slo": slo, "placement": placement})
