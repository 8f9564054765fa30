"""``tessera simulate``: JSON shape, table, plot, traces, and one-line errors."""

from __future__ import annotations

import json

import pytest

from tessera.cli.main import main

FIELDS = {"policy", "sloAttainment", "throughputRps", "latencyP50S", "latencyP95S", "deadlineMisses", "energyKWh",
          "usdPer1kRequests"}


def simulate(capsys, *args):
    code = main(["simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_hexgen_prints_the_figures_of_each_policy_and_the_comparison(capsys):
    code, out, _ = simulate(capsys, "--scenario", "hexgen", "--requests", "80", "--policy", "rr-fcfs")
    body = json.loads(out)
    assert code == 0
    assert [r["policy"] for r in body["results"]] == ["rr-fcfs"]
    assert set(body["results"][0]) == FIELDS
    assert 0 < body["results"][0]["throughputRps"] and body["results"][0]["latencyP95S"] >= body["results"][0]["latencyP50S"]


def test_polca_reports_the_largest_fleet_within_budget(capsys):
    code, out, _ = simulate(capsys, "--scenario", "polca", "--requests", "40")
    body = json.loads(out)
    assert code == 0
    assert {r["capping"] for r in body["results"]} == {True, False}
    capped = next(r for r in body["results"] if r["capping"])
    assert FIELDS | {"extraServersPct", "sloAttainmentLossPct", "capEvents"} <= set(capped)
    assert [g["extraServersPct"] for g in body["growth"]] == [0, 10, 20, 30, 40, 50, 60]


def test_table_output_and_plot(capsys, tmp_path):
    png = tmp_path / "h.png"
    code, out, _ = simulate(capsys, "--scenario", "hexgen", "--requests", "40", "--policy", "wb-urgency", "-o", "table",
                            "--plot", str(png))
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["policy", "sloAttainment"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_saved_trace_replays_to_the_same_figures(capsys, tmp_path):
    trace = tmp_path / "t.json"
    _, first, _ = simulate(capsys, "--scenario", "hexgen", "--requests", "60", "--policy", "wb-urgency",
                           "--save-trace", str(trace))
    _, again, _ = simulate(capsys, "--scenario", "hexgen", "--trace", str(trace), "--policy", "wb-urgency")
    a, b = json.loads(first)["results"][0], json.loads(again)["results"][0]
    assert {k: v for k, v in a.items() if k != "throughputRps"} == {k: v for k, v in b.items() if k != "throughputRps"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "nope"], "scenario: unknown 'nope'"),
        (["--scenario", "hexgen", "--policy", "fastest"], "--policy: unknown"),
        (["--scenario", "hexgen", "--requests", "0"], "--requests"),
        (["--scenario", "hexgen", "--plot", "x.jpg"], "--plot"),
        (["--scenario", "tco", "--trace", "t.json"], "--trace"),
        (["--scenario", "hexgen", "--trace", "/no/such/file.json"], "trace: cannot read"),
        (["--scenario", "hexgen", "--inventory", "/no/such/dir"], "inventory"),
        (["--scenario", "hexgen", "--tune-alpha", "--policy", "rr-fcfs"], "--tune-alpha"),
        (["--scenario", "hexgen", "--tune-alpha", "--plot", "a.png"], "--plot"),
        (["--scenario", "hexgen", "--rate", "-1"], "--rate"),
    ],
)
def test_bad_input_is_one_line(capsys, args, message):
    code, out, err = simulate(capsys, *args)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_bench_sim_compares_against_rr_fcfs(capsys):
    code = main(["bench", "sim", "--requests", "50"])
    body = json.loads(capsys.readouterr().out)
    assert code == 0 and body["baseline"] == "rr-fcfs"
    assert set(body["runs"]) == {"rr-fcfs", "wb-urgency"} and body["runs"]["wb-urgency"]["events"] > 50
