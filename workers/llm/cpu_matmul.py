"""Linear layers on CPU in the faster of two equal ways to multiply, chosen by timing both once per process.

``F.linear(x, W)`` computes ``x @ W.T``; ``(W @ x.T).T`` is the same product with the weight as the left
operand. With torch 2.13's CPU build (MKL) on this project's AMD EPYC machines, ``F.linear`` runs one to
three rows as matrix-vector products and four or more with a kernel that reads the weights slowly, while
the weight-first product streams the weights at close to memory speed: a whole SmolLM2-135M forward
(fp32, 2 threads) took 38.4 ms for 1 new token and 59.2 ms for 4 with ``F.linear``, 23.6 ms and 28.2 ms
weight first (docs/engine.md, "CPU matrix products"). One row (or three) gets a copy of its last row:
one column is itself a matrix-vector product. Which way is faster depends on the CPU and its
BLAS, so :func:`preferred_layout` times both on the model's largest weight and the model keeps the faster;
logits of the two ways differ by float rounding only (at most 6.5e-5 here).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Literal, get_args

from tessera.workers.torch_thread import run_in_passing_thread

logger = logging.getLogger(__name__)

Layout = Literal["weight-first", "torch-linear"]
# Decode steps, short verifications and small decode batches. Above 8 rows the weight-first product
# was as slow or slower here (a forward of 12 new tokens 70 ms against 61 ms; a 1,024-token prefill
# 2.34 s against 1.40 s).
WEIGHT_FIRST_MAX_ROWS = 8
# Overrides the measurement: "weight-first" or "torch-linear" (e.g. to compare the two in a benchmark).
LAYOUT_ENV = "TESSERA_CPU_LINEAR"


def weight_first(weight, x, bias=None):
    """``F.linear(x, weight, bias)`` computed as ``(weight @ rows.T).T`` up to ``WEIGHT_FIRST_MAX_ROWS`` rows
    of ``x`` (shaped ``(..., in_features)``), with ``F.linear`` above."""
    import torch
    import torch.nn.functional as F

    rows = x.numel() // x.shape[-1]
    if rows > WEIGHT_FIRST_MAX_ROWS:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    if rows in (1, 3):  # one more row is faster: 1 and 3 rows take the matrix-vector kernels
        flat = torch.cat([flat, flat[-1:]])  # contiguous: a stride-0 row falls back to the slow kernel
    # Contiguous like F.linear's result: in-place kernels downstream (xgrammar's token bitmask) need it.
    out = torch.mm(weight, flat.t())[:, :rows].t().contiguous()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def project(weight, x, layout: Layout):
    """``x @ weight.T`` in ``layout``."""
    import torch.nn.functional as F

    return weight_first(weight, x) if layout == "weight-first" else F.linear(x, weight)


def _median_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


_measured: dict[tuple[int, ...], Layout] = {}  # weight shape -> the faster layout, timed once per process


def _measure(weight) -> Layout:
    import torch
    import torch.nn.functional as F

    in_features = weight.shape[1]
    timings = {"torch-linear": 0.0, "weight-first": 0.0}
    with torch.inference_mode():
        for rows in (1, 4):  # a decode step; a verification or a small batch
            x = torch.randn(rows, in_features)
            timings["torch-linear"] += _median_ms(lambda: F.linear(x, weight))
            timings["weight-first"] += _median_ms(lambda: weight_first(weight, x))
    layout: Layout = min(timings, key=timings.get)
    logger.info("CPU linear layers: %s (%s)", layout, ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()))
    return layout


def preferred_layout(model) -> Layout:
    """The faster layout for ``model``'s linear layers on this CPU, timed once per process and weight shape
    on its largest weight (a cache-sized one would time the cache, not memory)."""
    import torch.nn as nn

    forced = os.environ.get(LAYOUT_ENV)
    if forced:
        if forced not in get_args(Layout):
            raise ValueError(f"{LAYOUT_ENV}: must be one of {', '.join(get_args(Layout))}, got {forced!r}")
        return forced
    largest = max((m.weight for m in model.modules() if isinstance(m, nn.Linear)), key=lambda w: w.numel())
    shape = tuple(largest.shape)
    if shape not in _measured:
        # Not in the loading thread: the OpenMP workers the timing starts would stay alive there, and they
        # slowed the engine's scheduler thread by a quarter here (112 -> 82 tokens/s).
        _measured[shape] = run_in_passing_thread(_measure, largest.detach())
    return _measured[shape]


def _weight_first_forward(self, x):
    return weight_first(self.weight, x, self.bias)


def adopt_layout(module, layout: Layout) -> None:
    """Compute every ``nn.Linear`` inside ``module`` in ``layout``."""
    import torch.nn as nn

    for linear in module.modules():
        if isinstance(linear, nn.Linear):
            if layout == "weight-first":
                linear.forward = _weight_first_forward.__get__(linear)
            else:
                vars(linear).pop("forward", None)  # back to nn.Linear.forward


def model_layout(model) -> Layout:
    """The layout ``model`` computes in: the preferred one on a CPU; GPUs keep ``F.linear``."""
    return preferred_layout(model) if next(model.parameters()).device.type == "cpu" else "torch-linear"


def adopt_preferred_layout(model) -> Layout:
    """Switch a model's linear layers to :func:`model_layout`; returns it."""
    layout = model_layout(model)
    adopt_layout(model, layout)
    return layout
