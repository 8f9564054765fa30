"""The cost model's engine profiles against the GPU measurements committed beside the calibration scripts:
the unfused profile against the eager H100 layer loop, the CUDA-graph profile against whole models on an H200."""

from __future__ import annotations

import json
from pathlib import Path

import tessera.planner.calibration as calibration
from tessera.planner import cost
from tessera.api.model_profile import EngineProfile, ModelProfileSpec
from tessera.planner.calibration.fit import (
    FIT_ON, HELD_OUT, engine_errors, engine_rows, fit_engine, median_abs_error, power_rows, rows,
)

MEASURED = Path(calibration.__file__).parent / "h100.json"
ENGINE = Path(calibration.__file__).parent / "h200_engine.json"


def test_the_unfused_profile_predicts_the_eager_h100_loop_within_20_percent():
    measured = json.loads(MEASURED.read_text())
    table = rows(measured, cost.UNFUSED)
    assert len([r for r in table if r["phase"] == "prefill"]) >= 6
    assert len([r for r in table if r["phase"] == "decode"]) >= 6
    assert median_abs_error(table, "prefill") <= 0.20
    assert median_abs_error(table, "decode") <= 0.20


def test_the_unfused_power_model_matches_the_eager_loops_board_power():
    measured = json.loads(MEASURED.read_text())
    table = power_rows(measured, cost.UNFUSED)
    assert len(table) == 3
    assert all(abs(r["error"]) <= 0.15 for r in table), table


def test_the_measurement_script_runs_on_cpu(tmp_path):
    from tessera.planner.calibration import measure

    out = tmp_path / "tiny.json"
    assert measure.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["layers"][0]["prefill"] and result["layers"][0]["decode"]
    assert all(m["seconds"] > 0 for m in result["layers"][0]["decode"])


def test_the_cuda_graph_profile_predicts_engine_decode_within_20_percent():
    """Step time and NVML watts of whole models decoding as CUDA graphs, the 3B model held out of the fit."""
    table = engine_rows(json.loads(ENGINE.read_text()), cost.CUDA_GRAPHS)
    assert len(table) >= 16
    for shape in (FIT_ON, HELD_OUT):
        step, watts = engine_errors(table, shape)
        assert step <= 0.20 and watts <= 0.20, (shape, step, watts)
    unfused_watts = engine_errors(engine_rows(json.loads(ENGINE.read_text()), cost.UNFUSED), FIT_ON)[1]
    assert unfused_watts > 0.4  # what the refit fixed: the old power model halves an engine's decode draw


def test_the_profile_in_cost_py_is_what_the_fit_finds():
    fitted = fit_engine(json.loads(ENGINE.read_text()))
    assert fitted.efficiency == cost.CUDA_GRAPHS.efficiency and fitted.power == cost.CUDA_GRAPHS.power


def test_a_model_profile_picks_its_engine_profile_unless_the_caller_chose_factors():
    spec = dict(parameters_billions=8.03, layers=32, hidden_size=4096)
    graphs, eager = ModelProfileSpec(**spec), ModelProfileSpec(**spec, engine_profile=EngineProfile.unfused)
    assert cost.engine_parameters(graphs) is cost.CUDA_GRAPHS and cost.engine_parameters(eager) is cost.UNFUSED
    chosen = cost.CostParameters()
    assert cost.engine_parameters(eager, chosen) is chosen
