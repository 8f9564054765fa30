"""Development-only tools of Tessera (not in the wheel): the emulated Kubernetes API and the operator runner.

Tests import them through pytest's ``pythonpath`` (``tests/support``); ``tessera bench operator`` adds
``tests/support`` of the repository checkout it runs from.
"""

from tessera_devtools.cluster import (
    EXAMPLES, ClusterClient, EmulatedCluster, scaled_nodes, wait_for,
)
from tessera_devtools.operator_run import OperatorRun

__all__ = ["EXAMPLES", "ClusterClient", "EmulatedCluster", "OperatorRun", "scaled_nodes", "wait_for"]
