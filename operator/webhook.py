"""The validating admission webhook: rejects invalid AgentWorkflows with the words of ``tessera validate``.

Registered only when ``TESSERA_WEBHOOK_PORT`` is set (kopf refuses to run admission handlers without a
server); the chart turns it on once a certificate is configured.
"""

from __future__ import annotations

from typing import Any

import kopf

from tessera.api import ResourceError, parse_resource
from tessera.operator.handlers import WORKFLOWS

HANDLER_ID = "validate-agentworkflow"


def admission_problems(body: Any) -> str | None:
    """The rejection message for an object, or None when it is valid."""
    try:
        parse_resource({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
    except ResourceError as err:
        return f"{err.kind}/{err.name}: " + "; ".join(str(p) for p in err.problems)
    return None


def validate_agentworkflow(body: kopf.Body, **_: Any) -> None:
    message = admission_problems(body)
    if message:
        raise kopf.AdmissionError(message, code=422)


def register(registry: kopf.OperatorRegistry | None = None) -> None:
    kopf.on.validate(*WORKFLOWS, id=HANDLER_ID, operations=["CREATE", "UPDATE"],
                     registry=registry or kopf.get_default_registry())(validate_agentworkflow)
