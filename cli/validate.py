"""``tessera validate``: check custom resources before they are applied."""

from __future__ import annotations

import argparse
import sys

from tessera.cli.documents import load


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check Tessera custom resources (files or folders of YAML)",
        description="Check AgentWorkflow, HardwareClass, PowerBudget and ModelProfile objects: the schema, "
        "and the rules that span fields (the stages form a DAG, dependsOn names a stage, ...). "
        "Prints one line per problem, 'FILE: Kind/name: field.path: reason', and exits 1 if there is any.",
    )
    parser.add_argument(
        "-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
        help="a YAML file (several documents allowed) or a folder of them; repeat for more",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    loaded = load(args.paths)
    for problem in loaded.problems:
        print(problem)
    if loaded.problems:
        return 1
    count = len(loaded.resources) + len(loaded.nodes)
    if count == 0:
        print("no objects found in " + ", ".join(args.paths), file=sys.stderr)
        return 1
    print(f"{count} objects valid", file=sys.stderr)
    return 0
