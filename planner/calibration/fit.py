"""The cost model against GPU measurements: its error on each, and efficiency factors fitted to them.

    python -m tessera.planner.calibration.fit planner/calibration/h100.json

Prints one line per measurement (measured, predicted, error) with the model's current factors and
with the fitted ones, then the fitted factors. Measurements come from ``measure.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from itertools import product

from tessera.api.hardware import Dtype, HardwareClassSpec
from tessera.api.model_profile import ModelProfileSpec
from tessera.planner import cost

# NVIDIA H100 SXM5 80GB spec sheet (the same figures as examples/inventory/hardware-classes.yaml).
H100_SXM = HardwareClassSpec(
    vendor="NVIDIA", generation="H100-SXM5-80GB", peak_tflops={Dtype.bf16: 989, Dtype.fp8: 1979}, memory_gi_b=80,
    memory_bandwidth_g_bps=3350, interconnect_g_bps=900, tdp_watts=700, idle_watts=140, usd_per_hour=2.99,
)


def stack_profile(layers: dict) -> ModelProfileSpec:
    """The measured layer stack as a ModelProfile (no embeddings or LM head: the stack has none)."""
    return ModelProfileSpec(
        parameters_billions=layers["params"] / 1e9, layers=layers["layers"], hidden_size=layers["hidden"],
        attention_heads=layers["heads"], kv_heads=layers["kv_heads"], dtype=Dtype.bf16, context_length=131072,
    )


def rows(measured: dict, params: cost.CostParameters, hw: HardwareClassSpec = H100_SXM) -> list[dict]:
    """One row per layer measurement: phase, case, measured and predicted seconds, relative error."""
    out = []
    for stack in measured["layers"]:
        model = stack_profile(stack)
        for m in stack["prefill"]:
            pred = cost.prefill_seconds(model, hw, m["tokens"], m["batch"], 1, params)
            out.append({"phase": "prefill", "shape": stack["shape"], "case": f"batch {m['batch']} x {m['tokens']} tokens",
                        "measured_s": m["seconds"], "predicted_s": pred})
        for m in stack["decode"]:
            pred = cost.decode_step_seconds(model, hw, m["batch"], m["context"], 1, params=params)
            out.append({"phase": "decode", "shape": stack["shape"], "case": f"batch {m['batch']}, context {m['context']}",
                        "measured_s": m["seconds"], "predicted_s": pred})
    for row in out:
        row["error"] = row["predicted_s"] / row["measured_s"] - 1
    return out


def median_abs_error(table: list[dict], phase: str) -> float:
    return statistics.median(abs(r["error"]) for r in table if r["phase"] == phase)


def mean_abs_error(table: list[dict], phase: str) -> float:
    return statistics.fmean(abs(r["error"]) for r in table if r["phase"] == phase)


POWER_DECODE = {"decode batch 8, context 1024": (8, 1024), "decode batch 128, context 1024": (128, 1024)}


def power_rows(measured: dict, params: cost.CostParameters, hw: HardwareClassSpec = H100_SXM) -> list[dict]:
    """Measured board power per phase against the power model (idle floor taken from the measurement)."""
    power = measured.get("power") or {}
    if not power.get("idle") or not power.get("prefill batch 1 x 8192"):
        return []
    hw = hw.model_copy(update={"idle_watts": power["idle"]["median_watts"]})
    stack = next(s for s in measured["layers"] if s["shape"] == "llama-8b")
    model = stack_profile(stack)
    out = [{"phase": "power", "case": "prefill batch 1 x 8192", "measured": power["prefill batch 1 x 8192"]["median_watts"],
            "predicted": cost.busy_watts(hw, 1.0, params)}]
    for name, (batch, context) in POWER_DECODE.items():
        if power.get(name):
            share = cost.decode_compute_share(model, hw, batch, context, 1, params)
            out.append({"phase": "power", "case": name, "measured": power[name]["median_watts"],
                        "predicted": cost.busy_watts(hw, share, params)})
    for row in out:
        row["error"] = row["predicted"] / row["measured"] - 1
    return out


def _grid(lo: float, hi: float, step: float) -> list[float]:
    n = int(round((hi - lo) / step))
    return [round(lo + i * step, 6) for i in range(n + 1)]


def fit(measured: dict, base: cost.CostParameters = cost.UNFUSED) -> cost.CostParameters:
    """Grid search: decode's bandwidth and compute efficiency and the per-layer overhead first (decode is
    where overhead shows), then prefill's compute efficiency, then the power model; each minimizing the
    mean absolute relative error (the median is reported; the mean keeps outliers from being ignored)."""
    best = None
    for bw, comp, overhead in product(_grid(0.5, 1.0, 0.02), _grid(0.2, 1.0, 0.1), _grid(0, 150e-6, 10e-6)):
        params = replace(base, efficiency=replace(base.efficiency, decode_bandwidth=bw, decode_compute=comp,
                                                  layer_overhead_s=overhead))
        score = mean_abs_error(rows(measured, params), "decode")
        if best is None or score < best[0]:
            best = (score, params)
    params = best[1]
    best = None
    for eff in _grid(0.3, 1.0, 0.01):
        trial = replace(params, efficiency=replace(params.efficiency, prefill_compute=eff))
        score = mean_abs_error(rows(measured, trial), "prefill")
        if best is None or score < best[0]:
            best = (score, trial)
    params = best[1]
    if not power_rows(measured, params):
        return params
    best = None
    for floor, exponent in product(_grid(0.0, 0.5, 0.02), _grid(0.5, 3.0, 0.25)):
        trial = replace(params, power=replace(params.power, memory_bound_dynamic=floor, compute_exponent=exponent))
        score = mean_abs_error(power_rows(measured, trial), "power")
        if best is None or score < best[0]:
            best = (score, trial)
    return best[1]


# NVIDIA H200 SXM 141GB spec sheet (examples/inventory/hardware-classes.yaml): the engine-style loop ran on one.
H200_SXM = H100_SXM.model_copy(update={"generation": "H200-SXM-141GB", "memory_gi_b": 141, "memory_bandwidth_g_bps": 4800})
FIT_ON, HELD_OUT = "llama-8b", "llama-3b"  # the engine profile is fitted on the 8B loop; the 3B loop checks it


def engine_rows(measured: dict, params: cost.CostParameters, hw: HardwareClassSpec = H200_SXM) -> list[dict]:
    """Decode steps of whole models replayed as CUDA graphs (``tessera.workers.power.measure``): measured
    and predicted seconds and board watts, per model, batch and context."""
    out = []
    for m in measured["models"]:
        model = ModelProfileSpec(
            parameters_billions=m["params"] / 1e9, layers=m["layers"], hidden_size=m["hidden"],
            attention_heads=m["heads"], kv_heads=m["kv_heads"], dtype=Dtype.bf16, context_length=131072)
        for d in m["decode"]:
            seconds = cost.decode_step_seconds(model, hw, d["batch"], d["context"], 1, params=params)
            share = cost.decode_compute_share(model, hw, d["batch"], d["context"], 1, params)
            out.append({"shape": m["shape"], "case": f"batch {d['batch']}, context {d['context']}",
                        "measured_s": d["seconds"], "predicted_s": seconds, "error": seconds / d["seconds"] - 1,
                        "measured_w": d["power"]["median_watts"], "predicted_w": cost.busy_watts(hw, share, params),
                        "eager_s": d["eager_seconds"]})
    for row in out:
        row["power_error"] = row["predicted_w"] / row["measured_w"] - 1
    return out


def engine_errors(table: list[dict], shape: str) -> tuple[float, float]:
    """Median |error| of step time and of watts on one model's rows."""
    rows_ = [r for r in table if r["shape"] == shape]
    return statistics.median(abs(r["error"]) for r in rows_), statistics.median(abs(r["power_error"]) for r in rows_)


def fit_engine(measured: dict, base: cost.CostParameters = cost.DEFAULT) -> cost.CostParameters:
    """Decode factors, then the power model, each minimizing the mean |error| on the FIT_ON model only."""
    def score(params: cost.CostParameters, key: str) -> float:
        return statistics.fmean(abs(r[key]) for r in engine_rows(measured, params) if r["shape"] == FIT_ON)

    best = min(
        (replace(base, efficiency=replace(base.efficiency, decode_bandwidth=bw, decode_compute=comp, layer_overhead_s=o))
         for bw, comp, o in product(_grid(0.4, 1.0, 0.02), _grid(0.2, 1.0, 0.05), _grid(0, 100e-6, 5e-6))),
        key=lambda p: score(p, "error"))
    return min(
        (replace(best, power=replace(best.power, memory_bound_dynamic=floor, compute_exponent=exponent))
         for floor, exponent in product(_grid(0.0, 0.9, 0.02), _grid(0.25, 3.0, 0.25))),
        key=lambda p: score(p, "power_error"))


def render_engine(table: list[dict]) -> str:
    lines = [f"{'shape':9} {'case':24} {'measured':>9} {'predicted':>9} {'error':>7} {'eager':>9} "
             f"{'watts':>6} {'pred. W':>7} {'error':>7}"]
    for r in table:
        lines.append(f"{r['shape']:9} {r['case']:24} {r['measured_s'] * 1e3:7.2f}ms {r['predicted_s'] * 1e3:7.2f}ms "
                     f"{r['error']:+7.1%} {r['eager_s'] * 1e3:7.2f}ms {r['measured_w']:6.0f} {r['predicted_w']:7.0f} "
                     f"{r['power_error']:+7.1%}")
    for shape in (FIT_ON, HELD_OUT):
        step, watts = engine_errors(table, shape)
        lines.append(f"median |error| {shape}{' (held out)' if shape == HELD_OUT else ''}: step {step:.1%}, watts {watts:.1%}")
    return "\n".join(lines)


def render(table: list[dict]) -> str:
    lines = [f"{'phase':8} {'shape':10} {'case':28} {'measured':>11} {'predicted':>11} {'error':>8}"]
    for r in table:
        lines.append(f"{r['phase']:8} {r['shape']:10} {r['case']:28} {r['measured_s'] * 1000:9.3f}ms "
                     f"{r['predicted_s'] * 1000:9.3f}ms {r['error']:+8.1%}")
    for phase in ("prefill", "decode"):
        lines.append(f"median |error| {phase}: {median_abs_error(table, phase):.1%}")
    return "\n".join(lines)


def render_power(table: list[dict]) -> str:
    lines = [f"power    {r['case']:38} {r['measured']:7.0f} W {r['predicted']:7.0f} W {r['error']:+8.1%}" for r in table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare the cost model with GPU measurements and fit its factors.")
    parser.add_argument("measurements", help="JSON written by measure.py (or by tessera.workers.power.measure, with --engine)")
    parser.add_argument("--engine", action="store_true",
                        help="fit the CUDA-graph engine profile to whole-model decode loops (H200, with NVML watts)")
    args = parser.parse_args(argv)
    with open(args.measurements) as fh:
        measured = json.load(fh)
    if args.engine:
        return engine_main(measured)
    print(f"device: {measured['device']}, torch {measured['torch']}")
    for m in measured["matmul"]:
        print(f"matmul {m['m']}x{m['k']}x{m['n']}: {m['tflops']:.0f} TFLOP/s "
              f"({m['tflops'] / (H100_SXM.peak_flops(Dtype.bf16) / 1e12):.0%} of the spec sheet's peak)")
    bw = measured["bandwidth"]
    print(f"bandwidth: read {bw['read_GBps']:.0f} GB/s, copy {bw['copy_GBps']:.0f} GB/s "
          f"({bw['read_GBps'] / H100_SXM.memory_bandwidth_g_bps:.0%} of the spec sheet's read)")
    print("\nwith the unfused profile's factors:")
    print(render(rows(measured, cost.UNFUSED)))
    print(render_power(power_rows(measured, cost.UNFUSED)))
    fitted = fit(measured)
    print("\nwith the fitted factors:")
    print(render(rows(measured, fitted)))
    print(render_power(power_rows(measured, fitted)))
    print(f"\nfitted: prefill_compute={fitted.efficiency.prefill_compute:g} {describe(fitted)}")
    return 0


def engine_main(measured: dict) -> int:
    print(f"device: {measured['device']}, torch {measured['torch']}, {measured['date']}")
    for name, profile in cost.ENGINE_PROFILES.items():
        print(f"\nwith the {name.value} profile:")
        print(render_engine(engine_rows(measured, profile)))
    fitted = fit_engine(measured)
    print("\nwith the fitted factors:")
    print(render_engine(engine_rows(measured, fitted)))
    print(f"\nfitted: {describe(fitted)}")
    return 0


def describe(params: cost.CostParameters) -> str:
    """The decode and power factors a fit sets, as cost.py names them."""
    e, p = params.efficiency, params.power
    return (f"decode_bandwidth={e.decode_bandwidth:g} decode_compute={e.decode_compute:g} "
            f"layer_overhead_s={e.layer_overhead_s:g} memory_bound_dynamic={p.memory_bound_dynamic:g} "
            f"compute_exponent={p.compute_exponent:g}")


if __name__ == "__main__":
    sys.exit(main())
