"""A real Prometheus on loopback scrapes the operator's and the workers' /metrics; every dashboard
query and every rule then has data, and one panel is drawn to a PNG from what Prometheus returns.

The operator is the real one, reconciling the examples in kmock's emulated cluster; the workers'
traffic is synthetic, shaped by the operator's plans (see metrics_exporter.py).

Set TESSERA_DOCS_IMAGES=SECONDS to let the workload run that long and write the panels to docs/img/.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tessera.api import metrics as catalogue

from .chartlib import DASHBOARDS, REPO_ROOT, RULES_FILE, dashboard_queries
from .panel_png import render_panel

pytestmark = pytest.mark.e2e

EXPORTER = Path(__file__).parent / "metrics_exporter.py"
SCRAPE_SECONDS = 1
# What Grafana substitutes; $__rate_interval is at least four scrape intervals.
GRAFANA_VARIABLES = {"$__rate_interval": "5s", "$__range": "1m", "$workflow": ".*", "$stage": ".*"}
WARM_UP_SCRAPES = 6
DATA_TIMEOUT_SECONDS = 30
DOCS_SECONDS = int(os.environ.get("TESSERA_DOCS_IMAGES", "0") or 0)
DOCS_PANELS = {"End-to-end latency against the target": "dashboard-latency.png",
               "Power: watts against the power budget": "dashboard-power.png"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    def __init__(self, url: str, started: float) -> None:
        self.url, self.started = url, started
        self.workflows: set[str] = set()  # the example workflows the operator planned

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def wait_for(self, expr: str, enough=bool) -> list[dict]:
        """The query's samples with a finite value, waiting up to DATA_TIMEOUT_SECONDS until they are enough."""
        deadline = time.monotonic() + DATA_TIMEOUT_SECONDS
        while True:
            finite = [s for s in self.query(expr) if math.isfinite(float(s["value"][1]))]
            if enough(finite) or time.monotonic() > deadline:
                return finite
            time.sleep(SCRAPE_SECONDS)


class Processes:
    """The child processes of the test, each with its log; a dead one fails the wait with its log's end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> None:
        with open(self.workdir / f"{name}.log", "w") as log:
            self.running[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)

    def wait_until(self, check, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.running.items():
                if process.poll() is not None:
                    log = (self.workdir / f"{name}.log").read_text()[-3000:]
                    raise AssertionError(f"{name} exited with {process.returncode} while waiting for {what}:\n{log}")
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for process in self.running.values():
            process.terminate()
        for process in self.running.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def prometheus(prometheus_binary, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prometheus")
    ports = {"operator": free_port(), "workers": free_port(), "prometheus": free_port()}
    plans = workdir / "plans.json"
    processes = Processes(workdir)
    try:
        for role in ("operator", "workers"):
            processes.start(role, [sys.executable, "-P", str(EXPORTER), "--role", role, "--port", str(ports[role]),
                                   "--plans", str(plans)])
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": [str(RULES_FILE)],
            # The job names the chart's ServiceMonitor gives (the operator-down alert relies on it).
            "scrape_configs": [
                {"job_name": f"tessera-{role}", "static_configs": [{"targets": [f"127.0.0.1:{ports[role]}"]}]}
                for role in ("operator", "workers")
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        processes.start("prometheus", [
            prometheus_binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}"])
        url = f"http://127.0.0.1:{ports['prometheus']}"
        started = time.time()
        processes.wait_until(lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200,
                             "Prometheus to be ready")
        server = Prometheus(url, started)
        processes.wait_until(lambda: len(server.query(f"sum_over_time(up[1m]) >= {WARM_UP_SCRAPES}")) == 2,
                             f"{WARM_UP_SCRAPES} scrapes of both endpoints")
        server.workflows = {wf["metadata"]["name"] for wf in json.loads(plans.read_text())}
        yield server
    finally:
        processes.stop()


def substitute(query: str, **variables: str) -> str:
    for name, value in {**GRAFANA_VARIABLES, **{f"${k}": v for k, v in variables.items()}}.items():
        query = query.replace(name, value)
    return query


def test_both_endpoints_are_up(prometheus):
    up = {s["metric"]["job"]: s["value"][1] for s in prometheus.query("up")}
    assert up == {"tessera-operator": "1", "tessera-workers": "1"}


def test_every_catalogued_metric_is_scraped(prometheus):
    scraped = {s["metric"]["__name__"] for s in prometheus.query('count by (__name__) ({__name__=~"tessera_.+"})')}
    expected = {name for spec in catalogue.ALL_METRICS for name in catalogue.exposed_names(spec)}
    missing = sorted(expected - scraped)
    assert not missing, f"in api/metrics.py but recorded by neither the operator nor the workers: {missing}"


@pytest.mark.parametrize(("where", "query"), dashboard_queries(), ids=[w for w, _ in dashboard_queries()])
def test_every_dashboard_query_returns_data(prometheus, where, query):
    query = substitute(query)
    if query.startswith("label_values("):
        metric_selector, label = query[len("label_values("):-1].rsplit(",", 1)
        values = prometheus.get(f"/api/v1/label/{label.strip()}/values", **{"match[]": metric_selector.strip()})
        assert values, f"{where}: the variable has no values"
        return
    assert prometheus.wait_for(query), f"{where}: no data for {query}"


def test_rules_evaluate_and_the_operator_is_not_reported_down(prometheus):
    deadline = time.monotonic() + DATA_TIMEOUT_SECONDS
    while True:
        groups = prometheus.get("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if all(rule["health"] == "ok" for rule in rules) or time.monotonic() > deadline:
            break
        time.sleep(SCRAPE_SECONDS)
    assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES_FILE.read_text())["groups"])
    assert [r["name"] for r in rules if r["health"] != "ok"] == []
    ratios = prometheus.wait_for("tessera:request_slo_error_ratio:rate5m",
                                 lambda samples: len(samples) == len(prometheus.workflows))
    assert {s["metric"]["workflow"] for s in ratios} == prometheus.workflows == {"chat", "rag-assistant", "text2sql"}
    assert all(0 <= float(s["value"][1]) <= 1 for s in ratios)
    assert prometheus.query('ALERTS{alertname="TesseraOperatorDown"}') == []


def render(prometheus: Prometheus, title: str, out: Path) -> int:
    board = json.loads(next(p for p in DASHBOARDS if p.name == "tessera-workflows.json").read_text())
    panel = next(p for p in board["panels"] if p["title"] == title)
    end = time.time()
    results = [
        (target, prometheus.get("/api/v1/query_range", query=substitute(target["expr"], workflow="chat"),
                                start=prometheus.started, end=end, step=SCRAPE_SECONDS)["result"])
        for target in panel["targets"]
    ]
    return render_panel(panel, results, out)


def test_a_dashboard_panel_renders_from_prometheus_data(prometheus, tmp_path):
    if DOCS_SECONDS:
        time.sleep(max(0.0, prometheus.started + DOCS_SECONDS - time.time()))
    for title, file_name in DOCS_PANELS.items():
        out = (REPO_ROOT / "docs" / "img" if DOCS_SECONDS else tmp_path) / file_name
        drawn = render(prometheus, title, out)
        assert drawn >= 3, f"{title}: only {drawn} lines had data"
        assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
