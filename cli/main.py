"""Entry point of the ``tessera`` command.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function
``handler(args) -> int`` (the exit code). Heavy imports (ray, torch) happen inside
the handlers so that ``tessera --help`` and ``tessera validate`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tessera.cli.errors import UserError

# Order is the order shown by `tessera --help`.
SUBCOMMAND_MODULES = [
    "validate",
    "crds",
    "operator",
    "plan",
    "simulate",
    "text2sql",
    "index",
    "bench",
    "demo",
]

DESCRIPTION = """\
Tessera places agent/LLM workflows (AgentWorkflow custom resources) onto a
heterogeneous fleet of GPUs, CPUs and accelerators, and runs them on Ray Serve.

Start with:
  tessera demo                         the whole pipeline on this machine, no cluster
  tessera validate -f examples/        check custom resources before you apply them
  tessera plan -f examples/workflows/text2sql.yaml -f examples/inventory/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"tessera.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
        # a model file, a --plot path, a trace: the file named and why, not a traceback
        print(f"error: {err.filename}: {err.strerror}" if err.filename else f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`| head`)
        sys.stderr.close()
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
