"""The example custom resources: three AgentWorkflows and an inventory (HardwareClasses, Nodes,
ModelProfiles, a PowerBudget).

The same folder is the repository's ``examples/`` (``kubectl apply -f examples/inventory/`` reads it
as it is) and the package data ``tessera.examples`` of the wheel, so ``tessera demo``, ``tessera bench
planner`` and the simulator find their defaults in an installed wheel as in a checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def example_path(*parts: str) -> Path:
    """A file or folder of the examples, e.g. ``example_path("inventory")``.

    A filesystem path, because the CLI reads files and whole folders with ``pathlib``; pip installs
    wheels unpacked, so the package data always lies on disk.
    """
    return Path(str(files(__name__).joinpath(*parts)))
