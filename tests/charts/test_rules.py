"""The alert rules with the real promtool: syntax, and unit tests of when each alert fires."""

from __future__ import annotations

from pathlib import Path

from .chartlib import RULES_FILE, run_tool

UNIT_TESTS = Path(__file__).parent / "promtool" / "tessera-rules.test.yaml"


def test_rules_file_is_valid(promtool):
    result = run_tool(promtool, "check", "rules", str(RULES_FILE))
    assert "SUCCESS" in result.stdout


def test_alerts_fire_exactly_as_the_unit_tests_expect(promtool):
    result = run_tool(promtool, "test", "rules", str(UNIT_TESTS))
    assert "SUCCESS" in result.stdout
