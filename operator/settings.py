"""The operator's settings: one pydantic-settings object, read from ``TESSERA_*`` environment variables.

Every variable the operator reads is a field below; the field's description is its documentation
(``tessera operator --help`` prints the list, ``docs/operator.md`` explains the policies).
"""

from __future__ import annotations

import fnmatch
import os
import random
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "TESSERA_"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_ignore_empty=True)

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch, comma-separated (empty: all namespaces).")
    kubeconfig: str | None = Field(
        default=None, description="Kubeconfig file to use (default: in-cluster credentials; --dev: ~/.kube/config).")
    dev: bool = Field(default=False, description="Local development: kubeconfig credentials and no peering.")
    solver: Literal["fast", "exact"] = Field(default="fast", description="Planner solver.")
    preemption: Literal["Never", "LowerPriority"] = Field(
        default="Never", description="When capacity is short: Never (first come, first served) or LowerPriority "
        "(a workflow may take devices and power from workflows of lower spec.priority; they get an Event).")
    power_budget_grace_seconds: float = Field(
        default=120, ge=0, description="How long a running workflow keeps its RayService after a PowerBudget "
        "shrank below what its plan expects, before it is re-planned (an Event says so at once).")
    api_timeout_seconds: float = Field(
        default=10, gt=0, description="Time limit of each Kubernetes API request the operator makes.")
    retry_max_seconds: float = Field(
        default=300, gt=0, description="Longest wait between retries of a failing reconcile (they back off "
        "exponentially from 5 s).")
    worker_image: str = Field(
        default="ghcr.io/tessera-dev/tessera-workers:0.1.0",
        description="Image of the Ray pods when an AgentWorkflow's spec.serve.image is not set.")
    vllm_worker_image: str = Field(
        default="ghcr.io/tessera-dev/tessera-workers-vllm:0.1.0",
        description="Image of the Ray pods of a workflow whose plan runs vLLM (the worker image plus vLLM and "
        "ray[llm]), when its spec.serve.image is not set.")
    allowed_worker_images: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Images an AgentWorkflow's spec.serve.image may name, comma-separated "
        "shell patterns such as ghcr.io/my-org/* (empty: any image). Whoever can create a workflow chooses "
        "the image its Ray pods run; the webhook refuses others and the operator marks such a workflow Invalid.")
    serve_clients: list[dict[str, Any]] | None = Field(
        default=None, description="NetworkPolicy peers (JSON list, as in a NetworkPolicy's `from`) that may reach "
        "each workflow's Serve port 8000; unset: any source, [] : only the workflow's own pods.")
    metrics_clients: list[dict[str, Any]] | None = Field(
        default=None, description="NetworkPolicy peers (JSON list) that may scrape the workers' metrics port; "
        "unset: any source, []: only the workflow's own pods.")
    ray_version: str = Field(default="2.60.0", description="rayVersion written into each RayService.")
    head_cpu: str = Field(default="2", description="CPU request of each Ray head pod.")
    head_memory: str = Field(default="8Gi", description="Memory request of each Ray head pod.")
    metrics_port: int = Field(
        default=9090, ge=0, le=65535,
        description="Port of /metrics (0: no metrics server); must differ from kopf's liveness port (8080).")
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

    @field_validator("namespaces", "allowed_worker_images", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    def worker_image_problem(self, image: str | None) -> str | None:
        """Why a workflow may not name ``image`` (None: it may, or it names none)."""
        if image is None or not self.allowed_worker_images:
            return None
        if any(fnmatch.fnmatchcase(image, pattern) for pattern in self.allowed_worker_images):
            return None
        return (f"image {image!r} is not allowed by the operator (TESSERA_ALLOWED_WORKER_IMAGES: "
                f"{', '.join(self.allowed_worker_images)})")

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> environment variable."""
        return {name: ENV_PREFIX + name.upper() for name in cls.model_fields}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "OperatorSettings":
        """Settings from ``TESSERA_*`` variables (``os.environ`` by default), then ``overrides`` that are not None;
        a bad value raises ValueError naming its variable."""
        source = EnvSettingsSource(cls)
        source.env_vars = parse_env_vars(os.environ if environ is None else environ, False, True, None)
        values = {**source(), **{k: v for k, v in overrides.items() if v is not None}}
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
        return "\n".join(f"  {var:<34} {cls.model_fields[name].description}" for name, var in cls.env_names().items())
