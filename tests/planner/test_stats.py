"""The one percentile: numpy's, and None where it is undefined."""

import math

import pytest

from tessera.planner.stats import percentile

CASES = [
    ("empty", [], 50, "linear", None),
    ("one value", [3.0], 95, "linear", 3.0),
    ("linear interpolation", [1.0, 2.0, 3.0, 4.0], 50, "linear", 2.5),
    ("higher", [1.0, 2.0, 3.0, 4.0], 50, "higher", 3.0),
    ("an unfinished request", [1.0, math.inf], 99, "higher", None),
]


@pytest.mark.parametrize("values,q,method,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_percentile(values, q, method, expected):
    assert percentile(values, q, method=method) == expected
