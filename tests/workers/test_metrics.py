"""Worker metrics in multiprocess mode: they never break a request, and dead processes' gauges drop out.

prometheus-client picks its storage from the environment when it is imported, so each case runs
in fresh Python processes, as Ray's replicas do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

GAUGE = "tessera_replica_power_watts"
SET_WATTS = """
from tessera.api import metrics as catalogue
from tessera.workers.metrics import make_metric
make_metric(catalogue.WORKER_REPLICA_WATTS).labels(
    workflow="w", stage="generate", replica={replica!r}, hardware_class="cpu").set(700.0)
"""


def python(code: str, metrics_dir, wait: bool = True):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    args = [sys.executable, "-P", "-c", textwrap.dedent(code)]
    if not wait:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def exported(metrics_dir) -> dict[str, float]:
    """replica -> watts, as the exporter of ``metrics_dir`` serves them."""
    out = python(f"""
        from tessera.workers.metrics import metrics_registry
        for family in metrics_registry().collect():
            for s in family.samples:
                if s.name == {GAUGE!r}:
                    print(s.labels["replica"], s.value)
        """, metrics_dir)
    assert out.returncode == 0, out.stderr
    return {line.split()[0]: float(line.split()[1]) for line in out.stdout.splitlines()}


REQUEST_PATH = """
import logging, sqlite3, tempfile, pathlib
logging.basicConfig(level=logging.WARNING)
from tessera.workers.text2sql.stages import Candidate, SQLExecutor
db = pathlib.Path(tempfile.mkdtemp()) / "t.sqlite"
conn = sqlite3.connect(db); conn.execute("CREATE TABLE t (x INTEGER)"); conn.commit(); conn.close()
{before}
for sql in ("SELECT COUNT(*) FROM t", "SELECT nope FROM t"):
    done = SQLExecutor().execute([Candidate(sql, 0.0, "greedy")], str(db))
    print(done[0].ok)
"""


@pytest.mark.parametrize("metrics_dir", ["{tmp}/a-file/metrics", "/proc"], ids=["missing", "unwritable"])
def test_a_missing_or_unwritable_folder_never_fails_the_sql_executor(tmp_path, metrics_dir):
    (tmp_path / "a-file").write_text("a file where the folder's parent should be")
    out = python(REQUEST_PATH.format(before=""), metrics_dir.format(tmp=tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
    assert out.stderr.count("is not a writable folder") == 1  # logged once, not per request


def test_a_folder_removed_under_a_running_process_drops_updates_without_failing(tmp_path):
    removes = "import shutil\nfrom tessera.workers.metrics import make_metric, multiprocess_dir\n" \
              "multiprocess_dir(); shutil.rmtree(r'{}')".format(tmp_path / "m")
    out = python(REQUEST_PATH.format(before=removes), tmp_path / "m")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
    assert "the metrics folder failed" in out.stderr


def test_exited_replicas_gauges_are_not_summed(tmp_path):
    for _ in range(3):  # one replica's process replaced twice: the same series written by three processes
        assert python(SET_WATTS.format(replica="r1"), tmp_path).returncode == 0
    assert python(SET_WATTS.format(replica="r-gone"), tmp_path).returncode == 0
    alive = python(SET_WATTS.format(replica="r2") + "import time; print('up', flush=True); time.sleep(60)",
                   tmp_path, wait=False)
    try:
        assert alive.stdout.readline().strip() == "up"
        # Exited processes marked themselves dead: their series are gone; the live replica reports 700 W.
        assert exported(tmp_path) == {"r2": 700.0}
    finally:
        alive.kill()
        alive.wait()


def test_the_exporter_sweeps_the_gauges_of_a_killed_replica(tmp_path):
    killed = python(SET_WATTS.format(replica="r1") + "import time; print('up', flush=True); time.sleep(60)",
                    tmp_path, wait=False)
    assert killed.stdout.readline().strip() == "up"
    killed.send_signal(signal.SIGKILL)  # no exit handler runs
    killed.wait()
    assert exported(tmp_path) == {"r1": 700.0}
    from tessera.workers.metrics import sweep_dead_processes

    assert sweep_dead_processes(str(tmp_path)) == [killed.pid]
    assert exported(tmp_path) == {}


def test_the_worker_pods_metrics_folder_has_a_size_limit():
    from tessera.api import HardwareClass
    from tessera.cli.documents import load
    from tessera.operator.builders import build_worker_group
    from tessera_devtools import EXAMPLES

    hardware = next(iter(load([str(EXAMPLES / "inventory")]).of_kind(HardwareClass)))
    volumes = build_worker_group(hardware, 1, "img", {})["template"]["spec"]["volumes"]
    assert [v["emptyDir"].get("sizeLimit") for v in volumes if v["name"] == "worker-metrics"] == ["256Mi"]
