"""The one percentile of the project (benchmarks, the simulator, the demo): numpy's, None when undefined."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def percentile(values: Iterable[float], q: float, method: str = "linear") -> float | None:
    """The ``q``-th percentile of ``values``; None for no values or a non-finite result (a run cut short)."""
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        return None
    value = float(np.percentile(data, q, method=method))
    return value if math.isfinite(value) else None
