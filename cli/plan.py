"""``tessera plan``: place a workflow on an inventory and print the plan (a table for people, or JSON)."""

from __future__ import annotations

import argparse
import json
import sys

from tessera.api import AgentWorkflow, HardwareClass, ModelProfile, Plan, PowerBudget
from tessera.cli.documents import load
from tessera.cli.errors import UserError
from tessera.cli.tables import format_table

INFEASIBLE_EXIT = 3



def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="place a workflow on hardware classes: which class, how many replicas, at what cost",
        description="Plan where each stage of an AgentWorkflow runs: the hardware class, replicas and tensor-parallel "
        "degree that meet the workflow's SLO at the lowest cost (or latency, or power), within the devices "
        "the Nodes offer and the PowerBudgets. Give the workflow and the inventory (HardwareClasses, Nodes, "
        "ModelProfiles, PowerBudgets) as files or folders. Exit status: 0 planned, 1 bad input, "
        f"{INFEASIBLE_EXIT} infeasible (the output names the constraint that binds).",
        epilog="example: tessera plan -f examples/workflows/text2sql.yaml -f examples/inventory/",
    )
    parser.add_argument(
        "-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
        help="a YAML file or folder: the AgentWorkflow(s) and the inventory; repeat for more",
    )
    parser.add_argument("--solver", choices=["fast", "exact"], default="fast",
                        help="fast: greedy + local search (default); exact: mixed-integer program (HiGHS)")
    parser.add_argument("--objective", choices=["tco", "latency", "power"], default=None,
                        help="what to minimize (default: the workflow's spec.placement.objective)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table",
                        help="table for people (default); json: one object per workflow, a stable contract")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="also draw the stage graph coloured by hardware class (one workflow only)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tessera.planner import Inventory, plan_workflow

    loaded = load(args.paths)
    if loaded.problems:
        for problem in loaded.problems:
            print(problem, file=sys.stderr)
        return 1
    workflows = loaded.of_kind(AgentWorkflow)
    if not workflows:
        raise UserError("no AgentWorkflow found in " + ", ".join(args.paths) + "; add -f WORKFLOW.yaml")
    classes = loaded.of_kind(HardwareClass)
    if not classes:
        raise UserError("no HardwareClass found in " + ", ".join(args.paths) + "; add -f with the inventory folder")
    if args.plot and len(workflows) > 1:
        raise UserError(f"--plot draws one workflow; {len(workflows)} were given")
    inventory = Inventory.build(classes, loaded.nodes, loaded.of_kind(PowerBudget), loaded.of_kind(ModelProfile))
    all_feasible = True
    for workflow in workflows:
        plan = plan_workflow(workflow.spec, inventory, args.solver, args.objective)
        all_feasible &= plan.feasible
        name = workflow.metadata.name
        if args.output == "json":
            print(json.dumps(plan_json(plan)))
        else:
            print(render_table(name, workflow, plan))
        if args.plot:
            from tessera.planner.plot import draw_plan

            draw_plan(workflow.spec, plan, inventory, args.plot)
            print(f"plot written to {args.plot}", file=sys.stderr)
    return 0 if all_feasible else INFEASIBLE_EXIT


def plan_json(plan: Plan) -> dict:
    """The contract of ``-o json``: the Plan's wire form (camelCase), every contract key present."""
    wire = plan.model_dump(by_alias=True, mode="json")
    wire["stages"] = {name: {k: v for k, v in stage.items() if v is not None} for name, stage in wire["stages"].items()}
    return wire


def render_table(name: str, workflow: AgentWorkflow, plan: Plan) -> str:
    slo = workflow.spec.slo
    if not plan.feasible:
        lines = [f"{name}: INFEASIBLE (objective {plan.objective}, solved in {plan.solve_seconds:.2f} s)"]
        lines += [f"  {reason}" for reason in plan.binding_constraints]
        return "\n".join(lines)
    header = ("STAGE", "CLASS", "REPLICAS", "TP", "BATCH", "LATENCY", "WATTS", "$/H", "DRAFT ON")
    rows = [header]
    for stage_name, stage in plan.stages.items():
        rows.append((
            stage_name, stage.hardware_class, str(stage.replicas), str(stage.tensor_parallel), str(stage.batch_size),
            f"{stage.predicted_latency_ms:,.0f} ms", f"{stage.watts:,.0f}", f"{stage.usd_per_hour:.2f}",
            stage.draft_hardware_class or "-",
        ))
    lines = format_table(rows)
    p = plan.predicted
    assert p is not None  # a feasible plan always carries its figures
    binding = "; ".join(plan.binding_constraints) or "none"
    lines.append(
        f"{name}: p50 {p.latency_ms_p50:,.0f} ms, p{slo.percentile:g} {p.latency_ms_at_slo:,.0f} ms "
        f"(SLO {slo.latency_ms:,.0f} ms), ${p.usd_per_hour:.2f}/h, ${p.usd_per1k_requests:.3f} per 1k requests, "
        f"{p.watts:,.0f} W at {slo.requests_per_second:g} req/s; binding: {binding}; "
        f"{plan.objective} objective, solved in {plan.solve_seconds:.2f} s"
    )
    return "\n".join(lines)
