"""The validating admission webhook: rejects invalid AgentWorkflows with the words of ``tessera validate``.

Registered only when ``TESSERA_WEBHOOK_PORT`` is set (kopf refuses to run admission handlers without a
server); the chart turns it on once a certificate is configured. ``AdmissionServer`` checks every request
against ``AdmissionReview`` first, so that a malformed review gets 400 naming the field rather than a 500
from deep inside kopf.
"""

from __future__ import annotations

from typing import Any, Literal

import aiohttp.web
import kopf
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tessera.api import ResourceError
from tessera.operator.handlers import WORKFLOWS
from tessera.operator.reconcile import parse_workflow
from tessera.operator.settings import OperatorSettings

HANDLER_ID = "validate-agentworkflow"
MAX_REVIEW_BYTES = 3 * 1024 * 1024  # the API server's own limit on an object is 1.5 MiB; a review may hold two


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class GroupVersionResource(_Open):
    group: str
    version: str
    resource: str


class AdmissionRequest(_Open):
    uid: str
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    resource: GroupVersionResource
    userInfo: dict[str, Any]
    object: dict[str, Any] | None = None
    oldObject: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _has_an_object(self) -> AdmissionRequest:
        if self.object is None and self.oldObject is None:
            raise ValueError("request.object or request.oldObject is required")
        return self


class AdmissionReview(_Open):
    """What kopf's admission code reads of a review (admission.k8s.io/v1); anything else passes through."""
    apiVersion: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


def review_problem(payload: bytes) -> str | None:
    """Why ``payload`` is not an AdmissionReview kopf can answer (the field and the reason), or None."""
    if len(payload) > MAX_REVIEW_BYTES:
        return f"the review is {len(payload)} bytes, over the limit of {MAX_REVIEW_BYTES}"
    try:
        AdmissionReview.model_validate_json(payload)
    except ValidationError as err:
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'review'}: {e['msg']}" for e in err.errors())
    return None


class AdmissionServer(kopf.WebhookServer):
    """kopf's webhook server, answering 400 to a request that is not a well-formed AdmissionReview."""

    @staticmethod
    async def _serve(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        problem = review_problem(await request.read())  # aiohttp keeps the body for kopf's own read
        if problem:
            raise aiohttp.web.HTTPBadRequest(text=f"malformed AdmissionReview: {problem}")
        return await kopf.WebhookServer._serve(fn, request)


def admission_problems(body: Any, settings: OperatorSettings | None = None) -> str | None:
    """The rejection message for an object, or None when it is valid (with ``settings``: also what the
    operator allows, e.g. the worker image; the reconciler checks the same)."""
    try:
        parse_workflow(body, settings)
    except ResourceError as err:
        return f"{err.kind}/{err.name}: " + "; ".join(str(p) for p in err.problems)
    return None


def validate_agentworkflow(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    state = memo.get("tessera")
    message = admission_problems(body, state.settings if state else OperatorSettings.from_env())
    if message:
        raise kopf.AdmissionError(message, code=422)


def register(registry: kopf.OperatorRegistry | None = None) -> None:
    kopf.on.validate(*WORKFLOWS, id=HANDLER_ID, operations=["CREATE", "UPDATE"],
                     registry=registry or kopf.get_default_registry())(validate_agentworkflow)
