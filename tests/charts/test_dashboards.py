"""The Grafana dashboards' structure: what Grafana would otherwise show as overlapping or empty panels."""

from __future__ import annotations

import json

import pytest

from .chartlib import DASHBOARDS

# What the workflows dashboard must show (issue #8), and a word of the panel title that shows it.
REQUIRED_PANELS = {
    "SLO attainment": "attainment", "remaining error budget": "error budget",
    "latency percentiles against the target": "latency against the target", "request rate": "request rate",
    "queue depth": "queue depth", "queue wait": "queue wait", "deadline misses": "deadline misses",
    "planned vs observed $/h": "planned vs observed $/h", "watts against the power budget": "watts against",
    "speculative-decoding acceptance rate": "acceptance rate", "plan changes": "plan changes",
}


def boards() -> list[tuple[str, dict]]:
    return [(path.name, json.loads(path.read_text())) for path in DASHBOARDS]


@pytest.mark.parametrize(("name", "board"), boards(), ids=[name for name, _ in boards()])
def test_panels_fit_the_grid_without_overlapping(name, board):
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{panel['title']} leaves the 24-column grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize(("name", "board"), boards(), ids=[name for name, _ in boards()])
def test_panels_are_identified_and_read_the_chosen_data_source(name, board):
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert len({p["title"] for p in board["panels"]}) == len(ids)
    assert board["uid"] == name.removesuffix(".json")
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    for panel in board["panels"]:
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        used = {word[1:] for t in panel["targets"] for word in t["expr"].replace("{", " ").replace("}", " ")
                .replace('"', " ").replace("[", " ").replace("]", " ").split() if word.startswith("$")}
        assert used <= variables | {"__rate_interval", "__range"}, f"{panel['title']} uses undefined {used}"


def test_the_workflows_dashboard_shows_everything_asked_for():
    board = dict(boards())["tessera-workflows.json"]
    titles = " | ".join(panel["title"].lower() for panel in board["panels"])
    missing = [topic for topic, words in REQUIRED_PANELS.items() if words.lower() not in titles]
    assert not missing, f"no panel shows {missing}"
    assert {"workflow", "stage"} <= {v["name"] for v in board["templating"]["list"]}
