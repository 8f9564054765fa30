"""``tessera operator``: run the Kubernetes operator (the same handlers as ``kopf run -m tessera.operator.main``)."""

from __future__ import annotations

import argparse

from tessera.cli.errors import UserError

DESCRIPTION = """\
Run the Tessera operator: it watches AgentWorkflows, plans each onto the fleet (HardwareClasses,
PowerBudgets, ModelProfiles, labelled Nodes), writes the plan into the workflow's status and runs it as a
KubeRay RayService. Stop it with Ctrl-C.

In a cluster it uses its service account and peers with its other replicas (only one acts at a time; the
ClusterKopfPeering CRD from kopf must be installed). On a workstation, --dev uses your kubeconfig and
skips peering.

Settings (flags override them):
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from tessera.operator.settings import OperatorSettings

    parser = subparsers.add_parser(
        "operator", help="run the Kubernetes operator",
        description=DESCRIPTION + OperatorSettings.describe(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", dest="namespaces", action="append", metavar="NS",
                       help="watch only this namespace (repeat for more; default: TESSERA_NAMESPACES or all)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--dev", action="store_true",
                        help="development: use the local kubeconfig (or --kubeconfig) and run without peering")
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (implies credentials from it)")
    parser.add_argument("--standalone", action="store_true", help="run without peering with other replicas")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="port of /metrics (0: off)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every handler call")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    import kopf

    from tessera.operator.settings import OperatorSettings

    try:
        settings = OperatorSettings.from_env(
            dev=args.dev or None, kubeconfig=args.kubeconfig, standalone=args.standalone or None,
            metrics_port=args.metrics_port, namespaces=[] if args.all_namespaces else args.namespaces,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    from tessera.operator import kube

    try:  # fail here, in one line, rather than inside kopf's start-up retries
        kube.configuration(settings)
    except Exception as err:  # kubernetes.config.ConfigException, a missing or malformed file
        hint = "" if settings.dev or settings.kubeconfig else " (outside a cluster, use --dev or --kubeconfig)"
        raise UserError(f"no Kubernetes credentials: {err}{hint}") from None
    import tessera.operator.main  # noqa: F401  (registers the handlers, and the webhook when configured)

    from tessera.operator import logs

    logs.configure(settings.log_level, verbose=args.verbose)
    standalone = settings.standalone or settings.dev
    asyncio.run(kopf.operator(
        clusterwide=not settings.namespaces, namespaces=settings.namespaces, standalone=standalone,
        priority=settings.peering_priority, peering_name=None if standalone else settings.peering_name,
        memo=kopf.Memo(settings=settings),
    ))
    return 0
