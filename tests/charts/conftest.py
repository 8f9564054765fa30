"""Fixtures of the chart tests: the real helm, promtool and prometheus binaries."""

from __future__ import annotations

import pytest

from .chartlib import tool


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return tool("prometheus")
