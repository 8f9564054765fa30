"""The cost model's defaults against the H100 measurements committed beside the calibration scripts."""

from __future__ import annotations

import json
from pathlib import Path

import tessera.planner.calibration as calibration
from tessera.planner import cost
from tessera.planner.calibration.fit import median_abs_error, power_rows, rows

MEASURED = Path(calibration.__file__).parent / "h100.json"


def test_defaults_predict_the_h100_within_20_percent():
    measured = json.loads(MEASURED.read_text())
    table = rows(measured, cost.DEFAULT)
    assert len([r for r in table if r["phase"] == "prefill"]) >= 6
    assert len([r for r in table if r["phase"] == "decode"]) >= 6
    assert median_abs_error(table, "prefill") <= 0.20
    assert median_abs_error(table, "decode") <= 0.20


def test_power_model_matches_measured_board_power():
    measured = json.loads(MEASURED.read_text())
    table = power_rows(measured, cost.DEFAULT)
    assert len(table) == 3
    assert all(abs(r["error"]) <= 0.15 for r in table), table


def test_the_measurement_script_runs_on_cpu(tmp_path):
    from tessera.planner.calibration import measure

    out = tmp_path / "tiny.json"
    assert measure.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["layers"][0]["prefill"] and result["layers"][0]["decode"]
    assert all(m["seconds"] > 0 for m in result["layers"][0]["decode"])
