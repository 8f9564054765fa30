"""Finds the metric names a PromQL expression (or a Grafana variable query) reads.

Not a full PromQL parser: it removes what cannot be a metric name (strings, label matchers, ranges,
label lists of by/without/on/ignoring/group_*, function names, keywords, numbers) and keeps the rest.
"""

from __future__ import annotations

import re

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:([a-zA-Z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,)?\s*\w+\s*\)\s*$")
IDENTIFIER = re.compile(r"[a-zA-Z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    variable_query = LABEL_VALUES.match(expr)
    if variable_query:
        return {variable_query.group(1)} if variable_query.group(1) else set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = LABEL_LISTS.sub(" ", text)
    text = re.sub(r"\b(\d+(ms|s|m|h|d|w|y))+\b", " ", text)  # durations, as after offset
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        following = text[match.end():].lstrip()[:1]
        if following == "(" or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names
