"""``tessera simulate``: the discrete-event simulator's scenarios (hexgen, polca, tco)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tessera.cli.errors import UserError
from tessera.cli.tables import format_table

DESCRIPTION = """\
Simulate a heterogeneous GPU cluster serving the Text-to-SQL workflow, with the real scheduling
policies of tessera.workers.scheduling on a virtual clock. Scenarios:
  hexgen  A100, A100, A6000, L40S; policies rr-fcfs (baseline), rr-urgency, wb-fcfs, wb-urgency,
          ef-urgency (ours: earliest predicted finish)
  polca   that fleet x5 grown by N % under its nameplate power budget, with and without capping
  tco     the cheapest fleet per configuration (H200 only vs mixes) that meets the SLO

Prints JSON (one object) on stdout; progress goes to stderr. Examples:
  tessera simulate --scenario hexgen
  tessera simulate --scenario hexgen --policy wb-urgency -o table --plot hexgen.png
  tessera simulate --scenario hexgen --tune-alpha
  tessera simulate --scenario hexgen --save-trace t.json && tessera simulate --scenario hexgen --trace t.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate", help="simulate scheduling policies and power capping on a heterogeneous cluster",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", required=True, metavar="NAME", help="hexgen, polca or tco")
    parser.add_argument("--policy", metavar="P", help="one policy instead of the scenario's list "
                        "(rr-fcfs, rr-urgency, wb-fcfs, wb-urgency, ef-urgency)")
    parser.add_argument("--rate", type=float, metavar="RPS",
                        help="arrival rate of the per-policy figures, requests/s (default: the scenario's nominal)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the workload (default 0)")
    parser.add_argument("--requests", type=int, metavar="N", help="requests per simulation (default: the scenario's)")
    parser.add_argument("-o", "--output", choices=["json", "table"], default="json", help="output format (default json)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the scenario's figure into this PNG")
    parser.add_argument("--tune-alpha", action="store_true",
                        help="grid-search alpha over 0, 0.1, ..., 0.5 for the workload-balanced dispatcher and print it")
    parser.add_argument("--trace", metavar="FILE", help="replay the requests of this JSON trace (hexgen only)")
    parser.add_argument("--save-trace", metavar="FILE", help="write the requests at the nominal rate as a JSON trace")
    parser.add_argument("--inventory", metavar="DIR", help="folder of HardwareClass/ModelProfile YAML "
                        "(default: examples/inventory)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tessera.sim import experiments
    from tessera.sim.workload import load_trace, save_trace
    from tessera.workers.scheduling import POLICIES

    if args.policy is not None and args.policy not in POLICIES:
        raise UserError(f"--policy: unknown {args.policy!r}, choose one of {', '.join(POLICIES)}")
    if args.requests is not None and args.requests < 1:
        raise UserError("--requests: must be at least 1")
    if args.rate is not None and not 0 < args.rate < 1e3:
        raise UserError("--rate: must be between 0 and 1000 requests/s")
    if args.plot and not args.plot.endswith(".png"):
        raise UserError("--plot: the file name must end in .png")
    if args.tune_alpha and args.policy is not None and not args.policy.startswith("wb-"):
        raise UserError(f"--tune-alpha: {args.policy} has no alpha; only the wb-* policies do")
    if args.plot and (args.trace or args.tune_alpha):
        raise UserError("--plot: draws a scenario run, not a --trace replay or --tune-alpha")
    if args.trace and args.scenario != "hexgen":
        raise UserError("--trace: only the hexgen scenario replays traces")
    try:
        scenario = experiments.Scenario.load(args.scenario)
        if args.rate is not None:
            scenario.nominal_rate_rps = args.rate
        trace = steps = None
        if args.trace:
            trace, steps = load_trace(Path(args.trace))
        runner = experiments.Runner(
            scenario, seed=args.seed, requests=args.requests,
            inventory=Path(args.inventory) if args.inventory else None,
            **({"trace": trace, "steps": steps} if trace is not None else {}),
        )
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise UserError(str(err).strip("'\"")) from None
    if args.save_trace:
        save_trace(runner.requests(scenario.nominal_rate_rps), Path(args.save_trace), runner.steps)
    policies = [args.policy] if args.policy else scenario.policies
    try:
        if args.tune_alpha:
            result = experiments.tune_alpha(runner, args.policy or "wb-urgency")
        elif trace is not None:
            result = experiments.replay(runner, policies)
        elif scenario.name == "polca":
            result = experiments.run_polca(runner, policies[0])
        elif scenario.name == "tco":
            result = experiments.run_tco(runner, policies[0])
        else:
            result = experiments.run_hexgen(runner, policies, curves=bool(args.plot))
    except ValueError as err:  # a call no engine can hold, a fleet that never meets the SLO
        raise UserError(str(err)) from None
    if args.plot:
        from tessera.sim.plots import plot

        plot(result, Path(args.plot))
    print(json.dumps(result) if args.output == "json" else table(result))
    return 0


def table(result: dict) -> str:
    """The per-policy (or per-configuration) rows as aligned text, for people."""
    rows = result.get("results")
    if not rows:
        return json.dumps(result, indent=2)
    columns = [k for k in rows[0] if not isinstance(rows[0][k], list)]
    lines = format_table([columns, *([_cell(r.get(c)) for c in columns] for r in rows)])
    extra = {k: v for k, v in result.items() if k not in ("results", "curves", "growth")}
    return "\n".join(lines) + "\n" + json.dumps(extra)


def _cell(value) -> str:
    """A table cell; a dict of device counts reads as "2x h200 1x a100-80gb"."""
    if isinstance(value, dict):
        return " ".join(f"{n}x {k}" for k, n in value.items())
    return str(value)
