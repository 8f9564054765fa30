"""AgentWorkflow: a DAG of agent/LLM stages with an end-to-end SLO."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from tessera.api.common import API_VERSION, ApiVersion, Condition, DNSLabel, DNSSubdomain, ObjectMeta, WireModel
from tessera.api.plan import Plan, PredictedFigures, StagePlan

MAX_STAGES = 256


class StageKind(str, Enum):
    llm = "llm"
    retrieval = "retrieval"
    tool = "tool"
    sql = "sql"
    transform = "transform"


class DraftMethod(str, Enum):
    ngram = "ngram"  # prompt lookup
    layer_skip = "layerSkip"  # the first k layers of the target
    quantized = "quantized"  # the target quantized to int8
    draft_head = "draftHead"  # a small head trained on the target's hidden states
    draft_model = "draftModel"  # a separate small model


class SpeculativeDecoding(WireModel):
    enabled: bool = True
    method: DraftMethod = DraftMethod.draft_head
    draft_model: DNSSubdomain | None = Field(
        default=None, description="ModelProfile of the draft (method draftModel)."
    )
    draft_length: int = Field(default=4, ge=1, le=16, description="Initial tokens drafted per step; adapts at run time.")
    expected_acceptance_rate: float = Field(
        default=0.7, gt=0, lt=1, description="Prior for the planner until measured acceptance is known."
    )
    draft_placement: Literal["auto", "colocated"] | DNSSubdomain = Field(
        default="auto",
        description="auto: the planner chooses the draft's class; colocated: with the target; or a HardwareClass.",
    )


ImportPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", max_length=256)]
# A request's priority and a workflow's: higher is more urgent. Bounded so that it stays an ordinary
# number everywhere it travels (queues, metrics labels, vLLM's priority scheduling).
Priority = Annotated[int, Field(ge=-1000, le=1000)]


class GenerationOptions(WireModel):
    """How an llm stage decodes (the same names as the engines' and OpenAI's options)."""

    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0, le=2, description="0 decodes greedily.")
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=8)
    grammar: str | None = Field(
        default=None, max_length=65536,
        description="An EBNF grammar (xgrammar / vLLM structured-outputs syntax) the output must match.",
    )
    json_schema: dict[str, Any] | None = Field(default=None, description="A JSON schema the output must match.")


class LLMCall(WireModel):
    """What an llm stage sends its model: templates over the request and the outputs it depends on."""

    prompt: str = Field(
        min_length=1, max_length=65536,
        description="Jinja2 template (sandboxed) of the user message; sees input, outputs.<stage>, params, iteration.",
    )
    system: str | None = Field(default=None, max_length=65536, description="Jinja2 template of the system message.")
    generation: GenerationOptions = Field(default_factory=GenerationOptions)


class RetrievalSpec(WireModel):
    """A vector search in a Qdrant collection."""

    collection: DNSSubdomain
    top_k: int = Field(default=4, ge=1, le=100)
    query: str = Field(default="{{ input }}", max_length=4096, description="Jinja2 template of the query text.")
    url: str | None = Field(default=None, description="A Qdrant server; unset: the embedded local store.")
    path: str | None = Field(
        default=None, description="Folder of the embedded local store (unset with no url: in memory).",
    )


class HTTPCall(WireModel):
    """An HTTP endpoint a tool stage calls."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(pattern=r"^https?://", max_length=2048, description="Jinja2 template of the URL.")
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = Field(default=None, max_length=65536, description="Jinja2 template of the body (JSON).")


class ToolSpec(WireModel):
    http: HTTPCall


class SQLSpec(WireModel):
    """A read-only, time-limited query on a database."""

    database: str = Field(min_length=1, max_length=4096, description="Path of the SQLite database (opened read-only).")
    query: str | None = Field(
        default=None, max_length=65536,
        description="Jinja2 template of the SELECT; unset: the implementation decides what runs.",
    )
    max_rows: int = Field(default=1000, ge=1, le=100000)


class Stage(WireModel):
    name: DNSLabel
    kind: StageKind
    model: DNSSubdomain | None = Field(default=None, description="ModelProfile name (required for llm stages).")
    input_tokens: int | None = Field(default=None, gt=0, description="Mean prompt tokens per call (llm).")
    output_tokens: int | None = Field(default=None, gt=0, description="Mean generated tokens per call (llm).")
    gflops: float | None = Field(default=None, gt=0, description="Compute per call in GFLOP (non-llm stages).")
    megabytes: float | None = Field(default=None, gt=0, description="Memory traffic per call in MB (non-llm stages).")
    measured_latency_ms: float | None = Field(
        default=None, gt=0, description="Measured latency of one call; used instead of the roofline estimate."
    )
    payload_k_b: float = Field(
        default=4, ge=0, alias="payloadKB", description="Output passed to dependent stages, in KB."
    )
    depends_on: list[DNSLabel] = Field(default_factory=list)
    fan_out: int = Field(default=1, ge=1, le=64, description="Parallel calls of this stage per request.")
    iterations: int = Field(default=1, ge=1, le=64, description="Sequential calls of this stage per request (loops).")
    retries: int = Field(default=0, ge=0, le=10)
    timeout_seconds: float = Field(default=60, gt=0)
    speculative_decoding: SpeculativeDecoding | None = None
    # What the stage runs (see docs/runtime.md): a kind's own block, or an implementation by import path.
    implementation: ImportPath | None = Field(
        default=None,
        description="module:function called with the stage's context (docs/runtime.md); "
                    "required for transform stages, overrides the built-in behaviour of other kinds.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Passed to the implementation as ctx.params.")
    llm: LLMCall | None = Field(default=None, description="The prompt and generation options (llm stages).")
    retrieval: RetrievalSpec | None = Field(default=None, description="The collection searched (retrieval stages).")
    tool: ToolSpec | None = Field(default=None, description="The HTTP endpoint called (tool stages).")
    sql: SQLSpec | None = Field(default=None, description="The database queried (sql stages).")


class SLO(WireModel):
    latency_ms: float = Field(gt=0, description="End-to-end latency target.")
    percentile: float = Field(default=99, gt=0, lt=100, description="Percentile the target applies to.")
    deadline_ms: float | None = Field(default=None, gt=0, description="Hard per-request deadline (default: latencyMs).")
    requests_per_second: float = Field(default=1, gt=0, le=1e6, description="Planned request rate (at most a million per second).")


class Objective(str, Enum):
    tco = "tco"
    latency = "latency"
    power = "power"


class Placement(WireModel):
    allowed_classes: list[DNSSubdomain] = Field(
        default_factory=list, description="HardwareClasses the planner may use (empty: all)."
    )
    pinned: dict[str, DNSSubdomain] = Field(
        default_factory=dict, description="Stage name -> HardwareClass it must run on."
    )
    objective: Objective = Objective.tco


DEFAULT_SERVE_IMPORT_PATH = "tessera.workers.runtime.app:build_app"


class ServeApplication(WireModel):
    """The Ray Serve application that runs the stages; the operator adds the plan to its args."""

    import_path: ImportPath = Field(
        default=DEFAULT_SERVE_IMPORT_PATH,
        description="module:function building the Serve application (default: Tessera's workflow runtime).",
    )
    policy: Literal["rr-fcfs", "rr-urgency", "wb-fcfs", "wb-urgency"] = Field(
        default="wb-urgency", description="Global dispatch (rr | wb) and replica queue (fcfs | urgency) of every stage.",
    )
    image: str | None = Field(default=None, description="Container image of the Ray pods (default: the operator's).")
    args: dict[str, Any] = Field(default_factory=dict, description="Extra arguments for the application builder.")


class AgentWorkflowSpec(WireModel):
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)
    slo: SLO
    priority: Priority = Field(default=0, description="Higher is more urgent (-1000 to 1000).")
    placement: Placement = Field(default_factory=Placement)
    suspend: bool = Field(default=False, description="Remove the running children; keep the status.")
    dry_run: bool = Field(default=False, description="Plan only; create no children.")
    serve: ServeApplication = Field(default_factory=ServeApplication)


class Phase(str, Enum):
    pending = "Pending"
    invalid = "Invalid"
    infeasible = "Infeasible"
    planned = "Planned"
    deploying = "Deploying"
    running = "Running"
    suspended = "Suspended"


class AgentWorkflowStatus(WireModel):
    observed_generation: int | None = None
    phase: Phase = Phase.pending
    conditions: list[Condition] = Field(default_factory=list)
    plan: Plan | None = None
    predicted: PredictedFigures | None = None
    message: str | None = None


class AgentWorkflow(WireModel):
    api_version: ApiVersion = API_VERSION
    kind: Literal["AgentWorkflow"] = "AgentWorkflow"
    metadata: ObjectMeta
    spec: AgentWorkflowSpec
    status: AgentWorkflowStatus | None = None


__all__ = [
    "DEFAULT_SERVE_IMPORT_PATH", "AgentWorkflow", "AgentWorkflowSpec", "AgentWorkflowStatus", "DraftMethod",
    "GenerationOptions", "HTTPCall", "ImportPath", "LLMCall", "Objective", "Phase", "Placement", "Plan",
    "PredictedFigures", "Priority", "RetrievalSpec", "SLO", "SQLSpec", "ServeApplication", "SpeculativeDecoding",
    "Stage", "StageKind", "StagePlan", "ToolSpec",
]
