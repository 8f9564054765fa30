"""The Text-to-SQL pipeline as a Ray Serve application: five stage deployments composed with handles.

``build_app(args)`` is the application builder that a RayService's ``serveConfigV2`` names
(``import_path: tessera.workers.text2sql.app:build_app``). Every stage deployment routes
with ``PolicyRequestRouter`` (global dispatch) and runs its calls through a
``ReplicaWorkQueue`` (local FCFS or urgency queue); see routing.py.

Args (a dict; camelCase as the operator writes it, or snake_case; unknown keys are refused):

- ``db``: path of the SQLite database the application answers about (opened read-only).
  Default: the generated dev database ``store.sqlite`` (built into the cache dir if missing).
- ``policy``: ``rr-fcfs`` | ``rr-urgency`` | ``wb-fcfs`` | ``wb-urgency`` (default ``wb-urgency``).
- ``alpha``: speed-vs-load weight of workload-balanced dispatch, in [0, 1] (default 0.2).
- ``stages``: per stage, ``{hardwareClass, replicas, rayActorOptions, maxOngoingRequests}``, keyed
  by a pipeline stage name (schema_linking, candidate_generation, execution, self_correction,
  selection) or, with ``stageMap``, by workflow stage names (workflow stages no deployment maps to
  are ignored). Missing: 1 replica on class ``cpu`` with Ray's default actor options (one whole CPU).
- ``stageMap``: pipeline stage -> workflow stage name (the AgentWorkflow's names).
- ``slo``: the workflow's SLO (``latencyMs``, optional ``deadlineMs``): a request's deadline is
  arrival + deadlineMs (or latencyMs) unless the request names its own. Default 60 s.
- ``priority``: default request priority (higher is more urgent); a request may override it.
- ``classSpeed``: hardware class -> factor on the stage mean times (the T_e of dispatch); default 1.
- ``stageMeanS``: stage -> mean seconds (defaults: pipeline.DEFAULT_STAGE_MEAN_S).
- ``nCandidates`` (default 4), ``maxRevisions`` (default 2), ``fewshotDbDir`` (default: the
  generated databases' dir), ``workflow`` and ``namespace`` (metric labels and the app name).

HTTP: POST JSON ``{"question": ..., "priority"?: int, "sloMs"?: number}`` to the route prefix;
the answer is ``{"sql", "columns", "rows", "stages": [{"name", "ms"}], "latencyMs", ...}``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from ray import serve
from ray.serve.config import RequestRouterConfig

from tessera.api import metrics as catalogue
from tessera.api.workflow import SLO
from tessera.workers.metrics import make_metric
from tessera.workers.scheduling import DEFAULT_ALPHA
from tessera.workers.text2sql.pipeline import (
    DEFAULT_SLO_S,
    STAGES,
    Text2SQLPipeline,
    Text2SQLRequest,
)
from tessera.workers.runtime.routing import PolicyRequestRouter, ReplicaWorkQueue, replica_hardware_class
from tessera.workers.text2sql.stages import (
    CandidateGenerator,
    SchemaLinker,
    SelfCorrector,
    Selector,
    SQLExecutor,
    SQLWriter,
)


class StageArgs(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    hardware_class: str = "cpu"
    replicas: int = Field(default=1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    max_ongoing_requests: int = Field(default=4, ge=1)
    usd_per_hour: float = Field(default=0.0, ge=0)  # per replica, from the plan
    watts: float = Field(default=0.0, ge=0)  # per replica, from the plan
    speculative_decoding: dict[str, Any] | None = None  # the workflow stage's, as the operator passes it
    draft_hardware_class: str | None = None  # where the plan puts the draft (colocated here: one process)


class Text2SQLAppArgs(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    db: str | None = None
    policy: Literal["rr-fcfs", "rr-urgency", "wb-fcfs", "wb-urgency"] = "wb-urgency"
    alpha: float = Field(default=DEFAULT_ALPHA, ge=0.0, le=1.0)
    stages: dict[str, StageArgs] = Field(default_factory=dict)
    stage_map: dict[str, str] = Field(default_factory=dict)
    slo: SLO | None = None
    priority: int = 0
    class_speed: dict[str, float] = Field(default_factory=dict)
    stage_mean_s: dict[str, float] = Field(default_factory=dict)
    n_candidates: int = Field(default=4, ge=1, le=16)
    max_revisions: int = Field(default=2, ge=0, le=8)
    fewshot_db_dir: str | None = None
    workflow: str = "text2sql"
    namespace: str = "default"

    @field_validator("stage_map", "stage_mean_s")
    @classmethod
    def _known_stages(cls, value: dict) -> dict:
        unknown = sorted(set(value) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown pipeline stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
        return value

    @model_validator(mode="after")
    def _stages_known(self) -> "Text2SQLAppArgs":
        # The operator passes every planned workflow stage; stages no deployment maps to (a CHESS
        # workflow's unit tests, say) are planned but not run here. Without a stageMap, the names must
        # be the pipeline's own, so a typo is caught.
        if self.stage_map:
            missing = sorted(set(self.stage_map.values()) - set(self.stages)) if self.stages else []
            if missing:
                raise ValueError(f"stageMap: names {missing[0]!r}, which is not in stages")
            return self
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise ValueError(f"stages: {unknown[0]!r} is neither a pipeline stage nor mapped by stageMap")
        return self

    def stage(self, name: str) -> StageArgs:
        return self.stages.get(self.stage_map.get(name, name)) or self.stages.get(name) or StageArgs()

    def slo_s(self) -> float:
        if self.slo is None:
            return DEFAULT_SLO_S
        return (self.slo.deadline_ms or self.slo.latency_ms) / 1000.0

    def speeds(self) -> dict[str, float]:
        classes = {self.stage(s).hardware_class for s in STAGES}
        return {**{c: 1.0 for c in classes}, **self.class_speed}


def parse_args(args: dict[str, Any] | None) -> Text2SQLAppArgs:
    """Validated builder args; bad input raises ValueError naming the field and the reason in one line."""
    try:
        return Text2SQLAppArgs.model_validate(args or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "args"
        raise ValueError(f"text2sql app args: {where}: {first['msg']}") from None


def default_db_dirs() -> Path:
    from tessera.workers.text2sql.data.generate import ensure_built

    return ensure_built()


@dataclass(frozen=True)
class ReplicaPlacement:
    """Where the plan put a stage's replicas, and what one of them costs and draws (for the dashboards)."""

    workflow: str
    hardware_class: str
    usd_per_hour: float = 0.0
    watts: float = 0.0


class _QueuedStage:
    """What every stage replica shares: its local queue and the routing stats the router reads."""

    def _start_queue(self, stage: str, placement: ReplicaPlacement, policy: str, concurrency: int) -> None:
        replica = serve.get_replica_context().replica_id.unique_id
        hardware_class = replica_hardware_class(placement.hardware_class)
        self.work = ReplicaWorkQueue(stage, replica, hardware_class, policy, concurrency)
        labels = {"workflow": placement.workflow, "stage": stage, "replica": replica, "hardware_class": hardware_class}
        make_metric(catalogue.WORKER_REPLICA_USD_PER_HOUR).labels(**labels).set(placement.usd_per_hour)
        make_metric(catalogue.WORKER_REPLICA_WATTS).labels(**labels).set(placement.watts)

    def record_routing_stats(self) -> dict[str, Any]:
        return self.work.routing_stats()


@serve.deployment
class SchemaLinkingStage(_QueuedStage):
    def __init__(self, placement: ReplicaPlacement, policy: str):
        self.linker = SchemaLinker()
        self._start_queue("schema_linking", placement, policy, concurrency=2)

    async def link(self, question, db_path, sched=None):
        return await self.work.run(sched, self.linker.link, question, db_path)


class _LLMStage(_QueuedStage):
    def _load(self, fewshot_db_dir: str, n_candidates: int, speculative: dict | None) -> None:
        from tessera.workers.llm.engine import LLMEngine
        from tessera.workers.llm.specdec import from_workflow

        self.writer = SQLWriter(LLMEngine.load_default(), from_workflow(speculative))
        self.generator = CandidateGenerator(fewshot_db_dir, n=n_candidates)


@serve.deployment
class CandidateGenerationStage(_LLMStage):
    def __init__(self, placement: ReplicaPlacement, policy: str, fewshot_db_dir: str, n_candidates: int,
                 speculative: dict | None = None):
        self._load(fewshot_db_dir, n_candidates, speculative)
        self._start_queue("candidate_generation", placement, policy, concurrency=1)

    async def write(self, question, linked, index: int, sched=None):
        """Candidate number ``index`` (0 is the greedy one) of this question."""
        call = self.generator.calls(question, linked, index + 1)[index]
        return await self.work.run(sched, self.writer.write, call)


@serve.deployment
class SelfCorrectionStage(_LLMStage):
    def __init__(self, placement: ReplicaPlacement, policy: str, fewshot_db_dir: str, n_candidates: int,
                 speculative: dict | None = None):
        self._load(fewshot_db_dir, n_candidates, speculative)
        self.corrector = SelfCorrector(self.generator)
        self._start_queue("self_correction", placement, policy, concurrency=1)

    async def revise(self, question, linked, failed, sched=None):
        return await self.work.run(sched, self.writer.write, self.corrector.call(question, linked, failed))


@serve.deployment
class ExecutionStage(_QueuedStage):
    def __init__(self, placement: ReplicaPlacement, policy: str):
        self.executor = SQLExecutor()
        self._start_queue("execution", placement, policy, concurrency=2)

    async def execute(self, candidates, db_path, sched=None):
        return await self.work.run(sched, self.executor.execute, candidates, db_path)


@serve.deployment
class SelectionStage(_QueuedStage):
    def __init__(self, placement: ReplicaPlacement, policy: str):
        self.selector = Selector()
        self._start_queue("selection", placement, policy, concurrency=2)

    async def select(self, candidates, sched=None):
        return await self.work.run(sched, self.selector.select, candidates)


@serve.deployment
class Text2SQLIngress:
    """The entry point (HTTP and handle): runs the pipeline over the stage handles."""

    def __init__(self, linking, generation, execution, correction, selection, args: dict):
        self.cfg = parse_args(args)
        self.db_path = self.cfg.db or str(default_db_dirs() / "store.sqlite")
        self.linking, self.generation, self.execution = linking, generation, execution
        self.correction, self.selection = correction, selection
        self.pipeline = Text2SQLPipeline(self, self.cfg.max_revisions, self.cfg.stage_mean_s, self.cfg.speeds(),
                                         observer=self._observe_stage)
        self.stage_classes = {s: self.cfg.stage(s).hardware_class for s in STAGES}

    # StageBackend over the handles ------------------------------------------------------------
    async def link(self, question, db_path, sched):
        return await self.linking.link.remote(question, db_path, sched=sched)

    async def generate(self, question, linked, sched):
        calls = [self.generation.write.remote(question, linked, i, sched=sched) for i in range(self.cfg.n_candidates)]
        return list(await asyncio.gather(*calls))

    async def execute(self, candidates, db_path, sched):
        return await self.execution.execute.remote(candidates, db_path, sched=sched)

    async def revise(self, question, linked, failed, sched):
        return await self.correction.revise.remote(question, linked, failed, sched=sched)

    async def select(self, candidates, sched):
        return await self.selection.select.remote(candidates, sched=sched)

    # metrics ------------------------------------------------------------------------------------
    def _observe_stage(self, stage: str, seconds: float, request: Text2SQLRequest, missed: bool) -> None:
        make_metric(catalogue.WORKER_STAGE_SECONDS).labels(
            workflow=self.cfg.workflow, stage=stage, hardware_class=self.stage_classes[stage]).observe(seconds)
        if missed:
            make_metric(catalogue.WORKER_DEADLINE_MISSES).labels(workflow=self.cfg.workflow, stage=stage).inc()

    def _observe_request(self, request: Text2SQLRequest, outcome: str, seconds: float) -> None:
        labels = {"workflow": self.cfg.workflow, "priority": str(request.priority)}
        make_metric(catalogue.WORKER_REQUESTS).labels(**labels, outcome=outcome).inc()
        make_metric(catalogue.WORKER_REQUEST_SECONDS).labels(**labels).observe(seconds)
        if outcome != "deadline_missed":
            make_metric(catalogue.WORKER_SLO_MET).labels(**labels).inc()

    # entry points -------------------------------------------------------------------------------
    async def answer(self, question: str, priority: int | None = None, slo_s: float | None = None) -> dict:
        request = Text2SQLRequest.make(question, self.db_path, slo_s or self.cfg.slo_s(),
                                       self.cfg.priority if priority is None else priority)
        started = time.perf_counter()
        try:
            result = await self.pipeline.answer(request)
        except Exception:
            self._observe_request(request, "error", time.perf_counter() - started)
            raise
        outcome = "deadline_missed" if result.deadline_missed else ("error" if result.error else "ok")
        self._observe_request(request, outcome, time.perf_counter() - started)
        return result.to_json()

    async def __call__(self, http_request) -> Any:
        from starlette.responses import JSONResponse

        try:
            body = await http_request.json()
        except ValueError:
            return JSONResponse({"error": "body: must be a JSON object"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("question"), str) or not body["question"].strip():
            return JSONResponse({"error": "question: must be a non-empty string"}, status_code=400)
        priority, slo_ms = body.get("priority"), body.get("sloMs")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            return JSONResponse({"error": "priority: must be an integer"}, status_code=400)
        if slo_ms is not None and (isinstance(slo_ms, bool) or not isinstance(slo_ms, (int, float)) or slo_ms <= 0):
            return JSONResponse({"error": "sloMs: must be a positive number"}, status_code=400)
        return JSONResponse(await self.answer(body["question"], priority, slo_ms / 1000.0 if slo_ms else None))


def build_app(args: dict[str, Any] | None = None):
    """The Serve application of the pipeline (see the module docstring for ``args``)."""
    cfg = parse_args(args)
    if cfg.db is not None and not Path(cfg.db).is_file():
        raise ValueError(f"text2sql app args: db: {cfg.db} is not a file")
    fewshot_dir = cfg.fewshot_db_dir or str(default_db_dirs())
    router = RequestRouterConfig(request_router_class=PolicyRequestRouter,
                                 request_router_kwargs={"policy": cfg.policy, "alpha": cfg.alpha},
                                 request_routing_stats_period_s=1.0)

    def deploy(deployment, stage: str, *init_args):
        stage_args = cfg.stage(stage)
        options = {"num_replicas": stage_args.replicas, "max_ongoing_requests": stage_args.max_ongoing_requests,
                   "request_router_config": router, "name": stage}
        if stage_args.ray_actor_options:
            options["ray_actor_options"] = stage_args.ray_actor_options
        placement = ReplicaPlacement(cfg.workflow, stage_args.hardware_class, stage_args.usd_per_hour, stage_args.watts)
        return deployment.options(**options).bind(placement, cfg.policy, *init_args)

    # The ingress only awaits handles: it takes no CPU from the stages' replicas.
    return Text2SQLIngress.options(name="text2sql", ray_actor_options={"num_cpus": 0}).bind(
        deploy(SchemaLinkingStage, "schema_linking"),
        deploy(CandidateGenerationStage, "candidate_generation", fewshot_dir, cfg.n_candidates,
               cfg.stage("candidate_generation").speculative_decoding),
        deploy(ExecutionStage, "execution"),
        deploy(SelfCorrectionStage, "self_correction", fewshot_dir, cfg.n_candidates,
               cfg.stage("self_correction").speculative_decoding),
        deploy(SelectionStage, "selection"),
        cfg.model_dump(by_alias=True, exclude_none=True, mode="json"),
    )

