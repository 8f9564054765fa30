"""The contract between the operator and the workers: what a RayService's ``serveConfigV2`` carries.

The operator builds :class:`WorkflowAppArgs` from a workflow and its plan and dumps it into the
application's ``args``; the workers' application builder validates the same model. Nothing else
crosses that boundary, so a field added here is added on both sides at once. The HTTP body a
workflow's route takes (:class:`WorkflowRequest`) and what it answers (:class:`WorkflowResponse`)
live here too: the CLI, the demo and the benchmarks send and read them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tessera.api.common import WireModel
from tessera.api.workflow import AgentWorkflowSpec, Priority

# Every worker pod of hardware class C offers the Ray custom resource "tessera.dev/C" (one unit per
# device) and every replica placed on C asks for it, so Ray places a replica only where the plan said.
RAY_RESOURCE_PREFIX = "tessera.dev/"
# Serve replicas write Prometheus samples here (multiprocess mode); the pod's exporter serves them.
WORKER_METRICS_DIR = "/tmp/tessera-metrics"
WORKER_METRICS_PORT = 9100
# Set on worker pods: the hardware class the replicas in the pod run on.
HARDWARE_CLASS_ENV = "TESSERA_HARDWARE_CLASS"
# A class name for replicas the plan does not place (local runs, stages missing from the plan).
UNPLANNED_CLASS = "cpu"

MAX_DEADLINE_MS = 24 * 3600 * 1000.0


# The application holding a workflow's model deployments (Tessera's engine, and forwarders to vLLM). It is
# separate from the workflow's runtime so that a change to the workflow (a prompt, the policy, a stage)
# redeploys the runtime alone and the loaded weights stay: Serve updates each application on its own.
MODELS_IMPORT_PATH = "tessera.workers.runtime.models:build_models_app"


def models_application_name(workflow: str) -> str:
    return f"{workflow}-models"


def models_route_prefix(workflow: str) -> str:
    """Where a workflow's model deployments answer the OpenAI API (``/<workflow>/v1/chat/completions``, ...)."""
    return f"/{workflow}/v1"


def llm_route_prefix(workflow: str) -> str:
    """Where a workflow's vLLM application (Ray Serve LLM) answers its OpenAI API."""
    return f"/{workflow}/llm"


def ray_resource(hardware_class: str) -> str:
    """The Ray custom resource that stands for one device of ``hardware_class``."""
    return RAY_RESOURCE_PREFIX + hardware_class


class StageDeployment(WireModel):
    """Where the plan puts one stage's replicas, and what one of them costs and draws."""

    hardware_class: str = UNPLANNED_CLASS
    replicas: int = Field(default=1, ge=1)
    tensor_parallel: int = Field(default=1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    max_ongoing_requests: int = Field(default=8, ge=1)
    usd_per_hour: float = Field(default=0.0, ge=0, description="Per replica, from the plan.")
    watts: float = Field(default=0.0, ge=0, description="Per replica, from the plan.")
    predicted_latency_ms: float = Field(
        default=0.0, ge=0, description="The plan's service time of one call: the weight of the stage's deadline share.",
    )
    draft_hardware_class: str | None = Field(default=None, description="Where the plan puts the speculative draft.")
    model_deployment: str | None = Field(
        default=None, description="Key in WorkflowAppArgs.models of the model deployment this llm stage calls.",
    )


class ModelDeployment(WireModel):
    """One model served on one hardware class, shared by every llm stage the plan puts there."""

    model: str = Field(description="ModelProfile name.")
    hardware_class: str = UNPLANNED_CLASS
    replicas: int = Field(default=1, ge=1)
    tensor_parallel: int = Field(default=1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    engine: Literal["cpu", "vllm"] = Field(
        default="cpu", description="cpu: Tessera's batching engine; vllm: vLLM through ray.serve.llm.",
    )
    source: str | None = Field(default=None, description="Where the weights come from (the ModelProfile's source).")
    max_batch_size: int = Field(
        default=16, ge=1, description="Requests one replica decodes together (vLLM admits twice as many).",
    )


class WorkflowAppArgs(WireModel):
    """The args of the Serve application that runs one AgentWorkflow, as the operator writes them."""

    workflow: str = Field(min_length=1, max_length=253)
    namespace: str = "default"
    spec: AgentWorkflowSpec = Field(description="The workflow's spec: the DAG, the SLO, the priority.")
    deployments: dict[str, StageDeployment] = Field(
        default_factory=dict, description="Per stage name: the plan's placement (missing: one unplanned replica).",
    )
    models: dict[str, ModelDeployment] = Field(default_factory=dict, description="Model deployments by key.")

    def deployment(self, stage: str) -> StageDeployment:
        return self.deployments.get(stage) or StageDeployment()

    def calls_models(self) -> bool:
        return any(stage.kind.value == "llm" for stage in self.spec.stages)

    def deadline_ms(self) -> float:
        """A request's deadline when it names none: the SLO's deadline, else its latency target."""
        slo = self.spec.slo
        return slo.deadline_ms or slo.latency_ms


class WorkflowRequest(WireModel):
    """The body of ``POST /<workflow>``."""

    input: Any = Field(default=None, description="The request's input (any JSON); templates see it as `input`.")
    priority: Priority | None = Field(default=None, description="Higher is more urgent; default: the workflow's.")
    deadline_ms: float | None = Field(
        default=None, gt=0, le=MAX_DEADLINE_MS, allow_inf_nan=False,
        description="Milliseconds from arrival; default: the workflow's SLO.",
    )
    stream: bool = Field(default=False, description="Answer with server-sent events of the final llm stage's tokens.")


class StageResult(WireModel):
    name: str
    output: Any = None
    started_ms: float = Field(ge=0, description="Since the request arrived.")
    ms: float = Field(ge=0, description="Wall time of the stage, every call and retry included.")
    attempts: int = Field(default=1, ge=0)
    hardware_class: str | None = None
    error: str | None = None


class WorkflowResponse(WireModel):
    workflow: str
    output: Any = Field(default=None, description="The output of the DAG's last stage (the sink).")
    stages: list[StageResult] = Field(default_factory=list)
    latency_ms: float = Field(ge=0)
    deadline_ms: float = Field(gt=0)
    deadline_missed: bool = False
    priority: int = 0
    error: str | None = Field(default=None, description="Which stage failed and why; unset when every stage ran.")


def build_applications(args: WorkflowAppArgs, import_path: str) -> list[dict[str, Any]]:
    """A workflow's Serve applications, both with ``args``: its model deployments (when an llm stage calls
    one), then its runtime (``import_path``) at ``/<workflow>``. Serve starts them in this order."""
    wire = args.to_wire()
    runtime = {"name": args.workflow, "route_prefix": f"/{args.workflow}", "import_path": import_path, "args": wire}
    if not args.calls_models():
        return [runtime]
    models = {"name": models_application_name(args.workflow), "route_prefix": models_route_prefix(args.workflow),
              "import_path": MODELS_IMPORT_PATH, "args": wire}
    return [models, runtime]
