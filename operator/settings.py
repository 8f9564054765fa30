"""The operator's settings: one object, read from ``TESSERA_*`` environment variables.

Every variable the operator reads is a field below; the field's description is its documentation
(``tessera operator --help`` prints the list). pydantic-settings is not installed, so ``from_env``
maps the variables onto the model by hand.
"""

from __future__ import annotations

import os
import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "TESSERA_"


class OperatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch, comma-separated (empty: all namespaces).")
    kubeconfig: str | None = Field(
        default=None, description="Kubeconfig file to use (default: in-cluster credentials; --dev: ~/.kube/config).")
    dev: bool = Field(default=False, description="Local development: kubeconfig credentials and no peering.")
    solver: Literal["fast", "exact"] = Field(default="fast", description="Planner solver.")
    worker_image: str = Field(
        default="ghcr.io/tessera-dev/tessera-workers:0.1.0",
        description="Image of the Ray pods when an AgentWorkflow's spec.serve.image is not set.")
    ray_version: str = Field(default="2.60.0", description="rayVersion written into each RayService.")
    head_cpu: str = Field(default="2", description="CPU request of each Ray head pod.")
    head_memory: str = Field(default="8Gi", description="Memory request of each Ray head pod.")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Port of /metrics (0: no metrics server).")
    peering_name: str = Field(default="tessera", description="kopf peering object shared by the replicas.")
    peering_priority: int = Field(
        default_factory=lambda: random.randint(1, 2**30),
        description="This replica's peering priority (default: random): the highest live replica acts, "
        "the others stand by.")
    standalone: bool = Field(default=False, description="Skip peering (one replica only, or development).")
    webhook_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the validating admission webhook (0: off).")
    webhook_host: str | None = Field(
        default=None, description="Host name the API server calls the webhook at (the webhook Service's DNS name).")
    webhook_cert: str | None = Field(default=None, description="TLS certificate file of the webhook server.")
    webhook_key: str | None = Field(default=None, description="TLS private key file of the webhook server.")
    webhook_managed: str | None = Field(
        default=None, description="Name of a ValidatingWebhookConfiguration the operator keeps up to date "
        "(empty: the chart manages it).")
    webhook_insecure: bool = Field(
        default=False, description="Serve the webhook over plain HTTP (tests only; the API server requires TLS).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> environment variable."""
        return {name: ENV_PREFIX + name.upper() for name in cls.model_fields}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "OperatorSettings":
        """Settings from ``TESSERA_*`` variables, then ``overrides``; a bad value raises ValueError naming it."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in cls.env_names().items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            values[name] = [p.strip() for p in raw.split(",") if p.strip()] if name == "namespaces" else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            field = str(first["loc"][0]) if first["loc"] else "?"
            var = cls.env_names().get(field, field)
            raise ValueError(f"{var}: {first['msg']}") from None

    @classmethod
    def describe(cls) -> str:
        """One line per variable, for --help."""
        lines = []
        for name, var in cls.env_names().items():
            info = cls.model_fields[name]
            lines.append(f"  {var:<28} {info.description}")
        return "\n".join(lines)
