"""Fixtures of the planner tests: the examples' inventory and workflows, and a device with round numbers."""

from __future__ import annotations

import pytest

from tessera.api import AgentWorkflow
from tessera.api.hardware import Dtype, HardwareClassSpec
from tessera.api.model_profile import ModelProfileSpec
from tessera.cli.documents import load
from tessera.planner import cost
from tessera.planner.synthetic import example_inventory


@pytest.fixture(scope="session")
def inventory(repo_root):
    return example_inventory(repo_root / "examples" / "inventory")


@pytest.fixture(scope="session")
def workflows(repo_root) -> dict[str, AgentWorkflow]:
    loaded = load([str(repo_root / "examples" / "workflows")])
    assert not loaded.problems
    return {wf.metadata.name: wf for wf in loaded.of_kind(AgentWorkflow)}


@pytest.fixture
def round_hw() -> HardwareClassSpec:
    """100 TFLOP/s, 1000 GB/s, 100 GB/s interconnect, 80 Gbit/s network, 500 W TDP, 100 W idle, $2/h."""
    return HardwareClassSpec(
        vendor="Test", generation="Round", peak_tflops={Dtype.bf16: 100}, memory_gi_b=80, memory_bandwidth_g_bps=1000,
        interconnect_g_bps=100, network_g_bps=80, tdp_watts=500, idle_watts=100, usd_per_hour=2.0, devices_per_node=8,
    )


@pytest.fixture
def round_model() -> ModelProfileSpec:
    """1 B parameters in bf16 (2 GB), 10 layers of width 1000, 10 KV heads of 100: 40,000 KV bytes per token."""
    return ModelProfileSpec(parameters_billions=1.0, layers=10, hidden_size=1000, attention_heads=10, kv_heads=10)


@pytest.fixture
def round_params() -> cost.CostParameters:
    """Efficiencies of one half, no fixed overheads: hand arithmetic stays short."""
    return cost.CostParameters(
        efficiency=cost.Efficiency(
            prefill_compute=0.5, decode_bandwidth=0.5, decode_compute=0.5, layer_overhead_s=0.0, interconnect=1.0,
            allreduce_latency_s=0.0, generic_compute=0.5, generic_bandwidth=0.5, generic_overhead_s=0.0, usable_memory=1.0,
        ),
        power=cost.PowerModel(memory_bound_dynamic=0.2, compute_exponent=1.0),
        prices=cost.Prices(usd_per_kwh=0.1, pue=1.0),
        network_hop_s=0.0,
    )
