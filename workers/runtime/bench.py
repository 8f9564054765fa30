"""``tessera bench runtime``: the runtime's own overhead per stage hop, and urgency against FCFS.

1. Overhead: the same trivial transform (``identity``) chained 1 and ``--hops`` + 1 times, their
   requests alternating; the difference of the median request latencies, per extra stage, is the cost of one hop (the ingress
   calling a stage deployment through its handle, the router, the replica's queue, the call).
2. Scheduling: one burst of mixed-priority requests through a two-stage workflow whose stages take
   ``--stage-ms`` each and run one call at a time per replica; the same burst under ``wb-urgency``
   and under ``wb-fcfs``, in one run. Per priority: SLO attainment, p50 and p95.

The burst helpers here are also the demo's (``tessera demo``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np

from tessera.planner.stats import percentile
from tessera.workers.runtime.context import StageContext

# (priority, deadline as a multiple of the burst's total work on the bottleneck stage, plus both stages once):
# each class is a third of the work, so the urgent third meets 0.4 with a fifth to spare when it goes first,
# and the normal third meets 0.8 after it; first come first served, most urgent requests wait behind others.
TRAFFIC = ((2, 0.4), (1, 0.8), (0, 1.5))


async def work(ctx: StageContext) -> Any:
    """A stage that holds its replica for ``params.ms`` milliseconds (a stand-in for a model call)."""
    await asyncio.sleep(float(ctx.params.get("ms", 100)) / 1000.0)
    return ctx.input


def percentiles(latencies_ms: list[float]) -> tuple[float | None, float | None]:
    return percentile(latencies_ms, 50), percentile(latencies_ms, 95)


def send_burst(handle, bodies: list[dict], progress: str | None = None, timeout_s: float = 900) -> list[dict]:
    """Every body at once through an ingress handle; one record per request, in order."""
    def ask(body: dict) -> dict:
        started = time.monotonic()
        try:
            answer = handle.answer.remote(body).result(timeout_s=timeout_s)
        except Exception as err:  # a failed request is counted, not fatal to the burst
            answer = {"error": f"{type(err).__name__}: {err}"}
        ms = (time.monotonic() - started) * 1000.0
        deadline_ms = body.get("deadlineMs") or answer.get("deadlineMs") or float("inf")
        return {"priority": body.get("priority", answer.get("priority", 0)), "ms": ms, "deadlineMs": deadline_ms,
                "answer": answer, "error": answer.get("error"), "met": not answer.get("error") and ms <= deadline_ms}

    from tqdm import tqdm

    records: list[dict | None] = [None] * len(bodies)
    with ThreadPoolExecutor(max_workers=min(64, len(bodies))) as pool, \
            tqdm(total=len(bodies), desc=progress, unit="req", file=sys.stderr, disable=progress is None) as bar:
        futures = {pool.submit(ask, body): i for i, body in enumerate(bodies)}
        for future in as_completed(futures):
            records[futures[future]] = future.result()
            bar.update(1)
    return [r for r in records if r is not None]


def by_priority(records: list[dict]) -> dict[str, dict]:
    """Per priority (most urgent first): requests, SLO attainment (a fraction), p50 and p95 in ms."""
    out = {}
    for priority in sorted({r["priority"] for r in records}, reverse=True):
        mine = [r for r in records if r["priority"] == priority]
        p50, p95 = percentiles([r["ms"] for r in mine])
        out[str(priority)] = {"requests": len(mine), "sloAttainment": sum(r["met"] for r in mine) / len(mine),
                              "p50Ms": p50, "p95Ms": p95, "deadlineMs": mine[0]["deadlineMs"],
                              "errors": sum(1 for r in mine if r["error"])}
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--requests", type=int, default=30, help="requests in the burst (default 30)")
    parser.add_argument("--stage-ms", type=float, default=100.0, help="service time of each of the 2 stages (default 100)")
    parser.add_argument("--hops", type=int, default=5, help="extra trivial stages for the overhead figure (default 5)")
    parser.add_argument("--overhead-requests", type=int, default=60, help="sequential requests per chain (default 60)")


def _app(name: str, stages: list[dict], policy: str, latency_ms: float, concurrency: int = 1) -> dict:
    from tessera.api.serve import StageDeployment, WorkflowAppArgs

    spec = {"stages": stages, "slo": {"latencyMs": latency_ms}, "serve": {"policy": policy}}
    deployments = {s["name"]: StageDeployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=concurrency,
                                              predicted_latency_ms=s.get("measuredLatencyMs", 1))
                   for s in stages}
    return WorkflowAppArgs(workflow=name, spec=spec, deployments=deployments).to_wire()


def _chain(length: int) -> list[dict]:
    return [{"name": f"s{i}", "kind": "transform", "measuredLatencyMs": 1, "dependsOn": [f"s{i - 1}"] if i else [],
             "implementation": "tessera.workers.runtime.builtins:identity"} for i in range(length)]


def _median_latencies_ms(handles: dict[int, Any], requests: int) -> dict[int, float]:
    """Median request latency of each chain, their requests alternating so that both see the same load."""
    samples: dict[int, list[float]] = {length: [] for length in handles}
    for round_ in range(requests + 5):  # the first 5 rounds warm up
        for length, handle in handles.items():
            started = time.perf_counter()
            handle.answer.remote({"input": "x"}).result()
            if round_ >= 5:
                samples[length].append((time.perf_counter() - started) * 1000.0)
    return {length: float(np.median(values)) for length, values in samples.items()}


def run(args) -> dict:
    import ray
    from ray import serve

    from tessera.workers.runtime.app import build_app

    for flag in ("requests", "hops", "overhead_requests"):
        if getattr(args, flag) < 1:
            args.bench_parser.error(f"--{flag.replace('_', '-')}: must be at least 1")
    if not 1 <= args.stage_ms <= 10_000:
        args.bench_parser.error("--stage-ms: must lie in [1, 10000]")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        print("overhead: chains of 1 and %d trivial stages" % (args.hops + 1), file=sys.stderr)
        handles = {length: serve.run(build_app(_app(f"chain{length}", _chain(length), "wb-urgency", 10_000, 8)),
                                     name=f"chain{length}", route_prefix=None)
                   for length in (1, args.hops + 1)}
        latency = _median_latencies_ms(handles, args.overhead_requests)
        for length in handles:
            serve.delete(f"chain{length}")
        overhead = (latency[args.hops + 1] - latency[1]) / args.hops

        total_ms = args.requests * args.stage_ms  # the burst's work on the bottleneck stage
        stages = [{"name": name, "kind": "transform", "measuredLatencyMs": args.stage_ms, "dependsOn": deps,
                   "implementation": "tessera.workers.runtime.bench:work", "params": {"ms": args.stage_ms}}
                  for name, deps in (("first", []), ("second", ["first"]))]
        bodies = [{"input": i, "priority": TRAFFIC[i % 3][0], "deadlineMs": round(TRAFFIC[i % 3][1] * total_ms + 2 * args.stage_ms)}
                  for i in range(args.requests)]
        results = {}
        for label, policy in (("urgency", "wb-urgency"), ("fcfs", "wb-fcfs")):
            handle = serve.run(build_app(_app("burst", stages, policy, 60_000)), name="burst", route_prefix=None)
            handle.answer.remote({"input": "warm-up"}).result()
            records = send_burst(handle, bodies, progress=f"burst, {policy}")
            results[label] = {"policy": policy, "byPriority": by_priority(records)}
            serve.delete("burst")
    finally:
        ray.shutdown()  # without serve.shutdown(): its controller kill only prints retry noise
    top = str(max(TRAFFIC)[0])
    urgent, fcfs = results["urgency"]["byPriority"][top], results["fcfs"]["byPriority"][top]
    return {
        "overheadMsPerHop": round(overhead, 3),
        "chainMedianLatencyMs": {str(k): round(v, 3) for k, v in latency.items()},
        "cpus": os.cpu_count(),
        **results,
        "goals": {"overheadAtMost5MsPerHop": overhead <= 5.0,
                  "urgentAttainmentAtLeast90Pct": urgent["sloAttainment"] >= 0.9,
                  "urgentBeatsFcfs": urgent["sloAttainment"] > fcfs["sloAttainment"]},
    }
