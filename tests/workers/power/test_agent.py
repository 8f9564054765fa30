"""The node power agent against a fake NVML module (the write path is tested up to the NVML call only:
the lent GPU's limits are never changed; the real reader's readings are in docs/calibration.md)."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timezone

import pytest

from tessera.api.power import NodePowerReadings
from tessera.workers.power.agent import Agent, desired_limits, serve, writes
from tessera.workers.power.readers import DeviceReading, LimitOutOfRange, NvmlReader
from tessera_devtools.power import FakeNvml

NOW = datetime(2026, 11, 28, 8, 0, tzinfo=timezone.utc)


def reading(index, limit=700.0, default=700.0) -> DeviceReading:
    return DeviceReading(index, f"GPU-{index}", "H200", 400.0, limit, 200.0, 700.0, default)


def budget(caps: dict[str, float]) -> dict:
    return {"metadata": {"name": "row"}, "status": {"caps": [{"device": d, "watts": w} for d, w in caps.items()]}}


def test_the_nvml_reader_reports_watts():
    reader = NvmlReader(FakeNvml([412.649, 79.297]))
    first, second = reader.read()
    assert (first.power_watts, first.limit_watts, first.min_limit_watts, first.default_limit_watts) == (
        pytest.approx(412.649), 700.0, 200.0, 700.0)
    assert first.uuid == "GPU-0" and first.name == "NVIDIA H100"
    assert second.index == 1 and second.power_watts == pytest.approx(79.297)


def test_set_limit_calls_nvml_in_milliwatts_and_refuses_what_the_device_would_not_accept():
    nvml = FakeNvml([400, 400])
    reader = NvmlReader(nvml)
    reader.set_limit(1, 490.0)
    assert nvml.set_calls == [(1, 490_000)]
    with pytest.raises(LimitOutOfRange, match="device 0: limit 150 W outside \\[200, 700\\] W"):
        reader.set_limit(0, 150.0)
    assert len(nvml.set_calls) == 1


@pytest.mark.parametrize("budgets,node,expected", [
    ([budget({"gpu-1/0": 490, "gpu-1/3": 420, "gpu-10/0": 300})], "gpu-1", {0: 490, 3: 420}),
    ([budget({"gpu-1/0": 490}), budget({"gpu-1/0": 420})], "gpu-1", {0: 420}),  # the lowest cap wins
    ([budget({}), {"metadata": {"name": "new"}}], "gpu-1", {}),
    ([budget({"gpu-1/x": 400})], "gpu-1", {}),
])
def test_desired_limits_are_this_nodes_caps(budgets, node, expected):
    assert desired_limits(budgets, node) == expected


@pytest.mark.parametrize("limits,desired,capped,expected", [
    ([700, 700], {0: 490}, set(), [(0, 490)]),
    ([490, 700], {0: 490}, {0}, []),  # in force already
    ([490.4, 700], {0: 490}, {0}, []),  # within the rounding tolerance
    ([490, 700], {}, {0}, [(0, 700)]),  # lifted: back to the default
    ([450, 700], {}, set(), []),  # someone else's limit: never touched
    ([700, 700], {0: 420, 1: 420}, set(), [(0, 420), (1, 420)]),
])
def test_writes_bring_the_limits_to_the_caps(limits, desired, capped, expected):
    readings = [reading(i, limit) for i, limit in enumerate(limits)]
    assert writes(readings, desired, capped) == expected


def test_the_agent_applies_caps_then_lifts_them_and_serves_its_readings():
    nvml = FakeNvml([650, 300])
    caps = {"gpu-1/0": 490.0}
    agent = Agent("gpu-1", NvmlReader(nvml), lambda: [budget(caps)])
    assert agent.tick(NOW) == [(0, 490.0)]
    assert nvml.set_calls == [(0, 490_000)] and agent.capped == {0}
    assert agent.tick(NOW) == []  # in force: nothing to write
    caps.clear()
    assert agent.tick(NOW) == [(0, 700.0)] and agent.capped == set()
    assert agent.latest.devices[0].power_watts == 490  # read before the lift
    agent.tick(NOW)
    server = serve(agent, 0)
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/readings", timeout=5).read()
        served = NodePowerReadings.model_validate(json.loads(body))
        assert served.node == "gpu-1" and [d.power_watts for d in served.devices] == [650.0, 300.0]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'tessera_power_node_watts{node="gpu-1"} 950.0' in metrics  # the cap is lifted: 650 W again
        assert 'tessera_power_limit_writes_total{node="gpu-1",outcome="ok"} 2.0' in metrics
    finally:
        server.shutdown()


def test_a_read_only_agent_never_writes_and_a_refused_limit_is_counted():
    nvml = FakeNvml([650])
    agent = Agent("gpu-1", NvmlReader(nvml), lambda: [budget({"gpu-1/0": 490.0})], apply=False)
    assert agent.tick(NOW) == [] and nvml.set_calls == []
    agent = Agent("gpu-1", NvmlReader(nvml), lambda: [budget({"gpu-1/0": 100.0})])
    agent.tick(NOW)
    assert nvml.set_calls == [] and agent.metrics.writes.labels(node="gpu-1", outcome="refused")._value.get() == 1


def test_the_engine_measurement_script_runs_on_cpu(tmp_path):
    """The GPU script (whole-model decode loops, the reader under load) as a CPU smoke test: no NVML there."""
    from tessera.workers.power import measure

    out = tmp_path / "tiny.json"
    assert measure.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    (model,) = json.loads(out.read_text())["models"]
    assert [(d["batch"], d["context"]) for d in model["decode"]] == measure.TINY_CASES
    assert all(d["seconds"] > 0 and d["eager_seconds"] > 0 for d in model["decode"])
