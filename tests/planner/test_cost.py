"""Every cost term against values worked out by hand on a device and a model with round numbers."""

from __future__ import annotations

import pytest

from tessera.api.workflow import SpeculativeDecoding, Stage
from tessera.planner import cost


def test_prefill_is_compute_bound_with_causal_attention(round_model, round_hw, round_params):
    # 2 x 1e9 x 1000 + 2 x 10 layers x 1000^2 x 1000 = 2.02e12 FLOP at 100e12 x 0.5 -> 40.4 ms (weights: 4 ms)
    assert cost.prefill_seconds(round_model, round_hw, 1000, 1, 1, round_params) == pytest.approx(0.0404)
    # short prompts are bound by reading the weights: 2e9 B at 0.5 TB/s = 4 ms
    assert cost.prefill_seconds(round_model, round_hw, 10, 1, 1, round_params) == pytest.approx(0.004)


def test_decode_step_streams_weights_and_kv(round_model, round_hw, round_params):
    # 2e9 B weights + 4 sequences x 1000 tokens x 40,000 B = 2.16e9 B at 0.5 TB/s
    assert cost.decode_step_seconds(round_model, round_hw, 4, 1000, params=round_params) == pytest.approx(4.32e-3)


def test_decode_step_tensor_parallel_adds_allreduce(round_model, round_hw, round_params):
    # half the bytes per device, plus 2 all-reduces x 10 layers of 4 x 1000 x 2 B at 100 GB/s (ring: x 2(tp-1)/tp)
    expected = 2.16e9 / 1e12 + 2 * 10 * (2 * 0.5 * 8000 / 100e9)
    assert cost.decode_step_seconds(round_model, round_hw, 4, 1000, tp=2, params=round_params) == pytest.approx(expected)


def test_decode_turns_compute_bound_at_large_batch(round_model, round_hw, round_params):
    # 4096 sequences, 10 tokens cached: memory 2e9 + 4096 x 10 x 4e4 = 3.638e9 B -> 7.28 ms;
    # compute 2e9 x 4096 + 4 x 10 x 4096 x 10 x 1000 = 8.194e12 FLOP at 50e12 -> 163.9 ms
    flops = 2e9 * 4096 + 4 * 10 * 4096 * 10 * 1000
    assert cost.decode_step_seconds(round_model, round_hw, 4096, 10, params=round_params) == pytest.approx(flops / 50e12)


def test_memory_fit_picks_the_smallest_tensor_parallel_degree(round_model, round_hw, round_params):
    big = round_model.model_copy(update={"parameters_billions": 100.0})  # 200 GB of weights
    per_device = 80 * 2**30
    assert 2 * per_device < 200e9 + 1000 * 4e4 <= 4 * per_device
    assert cost.min_tensor_parallel(big, round_hw, 1, 1000, params=round_params) == 4
    assert cost.min_tensor_parallel(round_model, round_hw, 1, 1000, params=round_params) == 1
    huge = round_model.model_copy(update={"parameters_billions": 1000.0})  # 2 TB: more than 8 devices hold
    assert cost.min_tensor_parallel(huge, round_hw, 1, 1000, params=round_params) is None


def test_speculative_decoding_expected_tokens_and_speedup():
    assert cost.expected_tokens_per_step(0.7, 4) == pytest.approx((1 - 0.7**5) / 0.3)
    assert cost.speculative_speedup(0.7, 4, 0.05) == pytest.approx((1 - 0.7**5) / 0.3 / 1.2)
    assert cost.speculative_speedup(0.5, 4, 0.0) == pytest.approx(1.9375)


def test_speculative_decode_time_divides_verify_steps_by_expected_tokens(round_model, round_hw, round_params):
    sd = SpeculativeDecoding(method="ngram", draft_length=4, expected_acceptance_rate=0.6)
    plain = cost.llm_call_time(round_model, round_hw, 1000, 100, 1, 1, params=round_params)
    spec = cost.llm_call_time(round_model, round_hw, 1000, 100, 1, 1, sd, params=round_params)
    verify = cost.decode_step_seconds(round_model, round_hw, 1, 1050, tokens_per_sequence=5, params=round_params)
    assert spec.decode_s == pytest.approx(100 * verify / cost.expected_tokens_per_step(0.6, 4))
    assert spec.prefill_s == plain.prefill_s
    assert spec.decode_s < plain.decode_s  # memory-bound: verifying 5 tokens costs about what 1 does


def test_draft_on_another_class_adds_a_round_trip_per_step(round_model, round_hw, round_params):
    sd = SpeculativeDecoding(method="draftModel", draft_model="small", draft_length=4, expected_acceptance_rate=0.7)
    draft = round_model.model_copy(update={"parameters_billions": 0.1, "layers": 2})
    params = round_params.__class__(round_params.efficiency, round_params.power, round_params.prices, network_hop_s=1e-4)
    colocated = cost.llm_call_time(round_model, round_hw, 500, 100, 1, 1, sd, draft, None, params)
    apart = cost.llm_call_time(round_model, round_hw, 500, 100, 1, 1, sd, draft, round_hw, params)
    e = cost.expected_tokens_per_step(0.7, 4)
    message = 1 * 5 * 1000 * 2  # batch x (g+1) x hidden x 2 B
    round_trip = 2 * (1e-4 + message / 10e9)
    assert apart.decode_s - colocated.decode_s == pytest.approx(100 * round_trip / e)
    assert apart.draft_busy_s == pytest.approx(100 * 4 * cost.decode_step_seconds(draft, round_hw, 1, 550, params=params) / e)


def test_non_llm_stage_roofline_and_measured_latency(round_hw, round_params):
    # 10 GFLOP at 100e12 x 0.5 = 0.2 ms; 1000 MB at 1e12 x 0.5 = 2 ms -> memory-bound
    estimated = Stage(name="rank", kind="transform", gflops=10, megabytes=1000)
    assert cost.generic_call_seconds(estimated, round_hw, round_params) == pytest.approx(2e-3)
    measured = Stage(name="tool", kind="tool", measured_latency_ms=150, gflops=1e6)
    assert cost.generic_call_seconds(measured, round_hw, round_params) == pytest.approx(0.15)
    assert cost.stage_service_time(measured, round_hw, params=round_params) == (pytest.approx(0.15), 0.0)


def test_transfer_uses_the_slower_network(round_hw, round_params):
    slow = round_hw.model_copy(update={"network_g_bps": 40})
    # 1 MB over 40 Gbit/s = 5 GB/s -> 0.2 ms
    assert cost.transfer_seconds(1e6, round_hw, slow, round_params) == pytest.approx(2e-4)


def test_power_per_phase_and_expected_draw(round_hw, round_params):
    assert cost.phase_watts(round_hw, "prefill", round_params) == pytest.approx(500)
    assert cost.phase_watts(round_hw, "decode", round_params) == pytest.approx(100 + 0.2 * 400)
    assert cost.phase_watts(round_hw, "idle", round_params) == pytest.approx(100)
    # 2 devices, busy half the time with compute-bound work: 2 x (100 + 0.5 x 400)
    assert cost.expected_watts(round_hw, 2, [(0.5, 1.0)], round_params) == pytest.approx(600)


def test_dollars_per_hour_are_devices_plus_energy(round_hw, round_params):
    # 2 devices x $2/h + 1 kW x PUE 1.0 x $0.10/kWh
    assert cost.usd_per_hour(round_hw, 2, 1000, round_params) == pytest.approx(4.1)
