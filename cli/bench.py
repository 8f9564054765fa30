"""``tessera bench NAME``: benchmarks that print JSON and compare against a baseline in the same run.

Each benchmark module exposes ``add_arguments(parser)`` and ``run(args) -> dict``;
this command prints the dict as JSON (``-o json``, the default) or as an indented
table-like JSON for people (``-o pretty``).
"""

from __future__ import annotations

import argparse
import importlib
import json

from tessera.cli.errors import UserError

# name -> (module, one-line description). Each module: add_arguments(parser), run(args) -> dict.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "planner": ("tessera.planner.bench", "planner: fast vs exact optimality gap, solve times, mixed fleet vs newest-only TCO"),
    "text2sql": ("tessera.cli.text2sql", "Text-to-SQL: execution accuracy of single-shot vs the full pipeline, stage latency"),
    "sim": ("tessera.sim.bench", "simulator speed: 10,000 Text-to-SQL requests, rr-fcfs vs wb-urgency, against a 30 s budget"),
    "engine": ("tessera.workers.llm.bench_engine", "LLM engine: continuous batching vs one-at-a-time tokens/s at 1-16 requests, grammar cost, speculative speedup, demo RSS"),
    "specdec": ("tessera.workers.llm.bench_specdec", "speculative decoding: tokens/s of each draft method vs plain greedy decoding, outputs checked identical"),
    "runtime": ("tessera.workers.runtime.bench", "workflow runtime: overhead per stage hop, and a mixed-priority burst under urgency vs FCFS (per-class attainment, p50/p95)"),
    "operator": ("tessera.operator.bench", "operator: 500 AgentWorkflows applied at once to an emulated cluster, time until all are planned, reconcile latency, RSS"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark and print its figures as JSON",
        description="Run a benchmark. Every benchmark measures against a named baseline in the same run "
        "and prints one JSON object on stdout (progress goes to stderr).",
    )
    benches = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module_name, summary) in BENCHMARKS.items():
        sub = benches.add_parser(name, help=summary, description=summary)
        sub.add_argument("-o", "--output", choices=["json", "pretty"], default="json", help="output format (default: json)")
        sub.set_defaults(handler=_runner(module_name), bench_parser=sub)
        importlib.import_module(module_name).add_arguments(sub)


def _runner(module_name: str):
    def handler(args: argparse.Namespace) -> int:
        try:
            result = importlib.import_module(module_name).run(args)
        except ValueError as err:  # an argument the benchmark refused, e.g. a model file that is not there
            raise UserError(f"bench {args.benchmark}: {err}") from None
        print(json.dumps(result, indent=2 if args.output == "pretty" else None, sort_keys=False))
        return 0

    return handler
