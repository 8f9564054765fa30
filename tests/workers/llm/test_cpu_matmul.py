"""The weight-first product equals F.linear (up to float rounding), whatever the rows, and the layout a model
adopts comes from a measurement or from the override, never silently from a bad value."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tessera.workers.llm import cpu_matmul
from tessera.workers.llm.cpu_matmul import LAYOUT_ENV, WEIGHT_FIRST_MAX_ROWS, adopt_layout, preferred_layout, weight_first


@pytest.mark.parametrize("shape", [(576,), (1, 576), (1, 1, 576), (2, 576), (1, 3, 576), (4, 1, 576), (2, 4, 576),
                                   (1, WEIGHT_FIRST_MAX_ROWS + 1, 576), (3, 70, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_weight_first_equals_linear(shape, bias):
    generator = torch.Generator().manual_seed(len(shape) * 100 + shape[-2 if len(shape) > 1 else 0])
    weight = torch.randn(300, 576, generator=generator)
    b = torch.randn(300, generator=generator) if bias else None
    x = torch.randn(*shape, generator=generator)

    got = weight_first(weight, x, b)

    assert got.shape == F.linear(x, weight, b).shape
    assert got.is_contiguous()  # in-place kernels downstream (the grammar's token bitmask) rely on it
    torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-4, atol=1e-4)


def test_a_non_contiguous_input_gives_the_same_product():
    weight, x = torch.randn(64, 32), torch.randn(32, 5).t()  # 5 rows, transposed view
    torch.testing.assert_close(weight_first(weight, x), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_adopting_weight_first_changes_every_linear_but_not_the_output():
    model = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8, bias=False))
    x = torch.randn(1, 3, 16)
    before = model(x)

    adopt_layout(model, "weight-first")

    assert all("forward" in vars(m) for m in model if isinstance(m, nn.Linear))
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_torch_linear_restores_the_modules_own_forward():
    model = nn.Sequential(nn.Linear(16, 32))
    adopt_layout(model, "weight-first")
    adopt_layout(model, "torch-linear")
    assert "forward" not in vars(model[0])


def test_the_layout_is_measured_once_per_weight_shape(monkeypatch):
    monkeypatch.delenv(LAYOUT_ENV, raising=False)
    monkeypatch.setattr(cpu_matmul, "_measured", {})
    calls = []
    monkeypatch.setattr(cpu_matmul, "_measure", lambda weight: calls.append(tuple(weight.shape)) or "weight-first")
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 64))

    assert preferred_layout(model) == "weight-first"
    assert preferred_layout(model) == "weight-first"
    assert calls == [(64, 32)]  # the largest weight, once


def test_the_override_wins_and_a_bad_value_names_the_variable(monkeypatch):
    model = nn.Sequential(nn.Linear(4, 4))
    monkeypatch.setenv(LAYOUT_ENV, "torch-linear")
    assert preferred_layout(model) == "torch-linear"
    monkeypatch.setenv(LAYOUT_ENV, "fastest")
    with pytest.raises(ValueError, match=f"{LAYOUT_ENV}: must be one of weight-first, torch-linear, got 'fastest'"):
        preferred_layout(model)

