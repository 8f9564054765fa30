"""The Text-to-SQL workflow: one orchestration, run either in-process (``DirectStages``) or over Ray Serve.

``Text2SQLPipeline.answer`` calls five stages through a ``StageBackend`` (five async methods).
Every stage call carries a ``sched`` dict — the request's deadline and priority and the
stage's time estimates, the fields of ``tessera.workers.scheduling.StageCall`` — which
the Ray Serve router and the replicas' urgency queues read; in-process it only feeds
the deadline bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tessera.workers.scheduling import StageCall, absolute_stage_deadline_s
from tessera.workers.text2sql.schema import LinkedSchema
from tessera.workers.text2sql.stages import (
    Candidate,
    CandidateGenerator,
    SchemaLinker,
    SelfCorrector,
    Selection,
    Selector,
    SQLExecutor,
    SQLWriter,
)

STAGES = ("schema_linking", "candidate_generation", "execution", "self_correction", "selection")
# Mean seconds of each stage, for splitting a request's deadline into per-stage shares (HEXGEN's
# SLO_stage). `tessera bench text2sql` measured 2.8 s for 4 candidates on a 16-core CPU; these are
# rough figures for the 2-core machines the project runs on, and the app's `stageMeanS` overrides them.
DEFAULT_STAGE_MEAN_S = {"schema_linking": 0.01, "candidate_generation": 6.0, "execution": 0.02,
                        "self_correction": 2.0, "selection": 0.001}
DEFAULT_SLO_S = 60.0


@dataclass
class Text2SQLRequest:
    question: str
    db_path: str
    deadline_s: float  # absolute wall-clock time (time.time()) by which the answer is due
    priority: int = 0  # higher is more urgent (AgentWorkflow spec.priority)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    arrival_s: float = field(default_factory=time.time)

    @classmethod
    def make(cls, question: str, db_path: str | Path, slo_s: float = DEFAULT_SLO_S, priority: int = 0):
        if not question or not question.strip():
            raise ValueError("question: must not be empty")
        if slo_s <= 0:
            raise ValueError(f"slo_s: must be positive, got {slo_s}")
        now = time.time()
        return cls(question.strip(), str(db_path), now + slo_s, priority, arrival_s=now)


@dataclass
class Text2SQLAnswer:
    sql: str
    columns: list[str]
    rows: list[list]
    stages: list[dict]  # [{"name", "ms"}]
    latency_ms: float
    candidates: int  # SQL statements executed (after deduplication of identical SQL: fewer)
    votes: int
    error: str | None
    deadline_missed: bool
    candidate_sql: list[dict] = field(default_factory=list)  # every candidate with its outcome

    def to_json(self) -> dict:
        return {"sql": self.sql, "columns": self.columns, "rows": self.rows, "stages": self.stages,
                "latencyMs": round(self.latency_ms, 1), "votes": self.votes, "candidates": self.candidates,
                "error": self.error, "deadlineMissed": self.deadline_missed}


class StageBackend(Protocol):
    async def link(self, question: str, db_path: str, sched: dict) -> LinkedSchema: ...

    async def generate(self, question: str, linked: LinkedSchema, sched: dict) -> list[Candidate]: ...

    async def execute(self, candidates: list[Candidate], db_path: str, sched: dict) -> list[Candidate]: ...

    async def revise(self, question: str, linked: LinkedSchema, failed: Candidate, sched: dict) -> Candidate: ...

    async def select(self, candidates: list[Candidate], sched: dict) -> Selection: ...


class DirectStages:
    """All stages in this process, one after another (``tessera text2sql --direct``, the benchmark)."""

    def __init__(self, engine, fewshot_db_dir: str | Path, n_candidates: int = 4, sql_timeout_s: float = 2.0,
                 max_rows: int = 1000):
        self.linker = SchemaLinker()
        self.writer = SQLWriter(engine)
        self.generator = CandidateGenerator(fewshot_db_dir, n=n_candidates)
        self.corrector = SelfCorrector(self.generator)
        self.executor = SQLExecutor(sql_timeout_s, max_rows)
        self.selector = Selector()

    async def link(self, question, db_path, sched):
        return self.linker.link(question, db_path)

    async def generate(self, question, linked, sched):
        return [self.writer.write(call) for call in self.generator.calls(question, linked)]

    async def execute(self, candidates, db_path, sched):
        return self.executor.execute(candidates, db_path)

    async def revise(self, question, linked, failed, sched):
        return self.writer.write(self.corrector.call(question, linked, failed))

    async def select(self, candidates, sched):
        return self.selector.select(candidates)


def sched_for(request: Text2SQLRequest, stage: str, stage_mean_s: dict[str, float],
              class_speed: dict[str, float]) -> dict:
    """The StageCall fields of one stage call (est_seconds_by_class: the stage mean times each class's factor)."""
    later = STAGES[STAGES.index(stage) + 1:]
    mean = stage_mean_s.get(stage, 0.0)
    return {"request_id": request.request_id, "stage": stage, "priority": request.priority,
            "arrival_s": request.arrival_s, "deadline_s": request.deadline_s, "stage_started_s": time.time(),
            "est_seconds_by_class": {cls: mean * factor for cls, factor in class_speed.items()},
            "remaining_stage_means_s": [stage_mean_s.get(s, 0.0) for s in later], "stage_mean_s": mean}


class Text2SQLPipeline:
    def __init__(self, backend: StageBackend, max_revisions: int = 2,
                 stage_mean_s: dict[str, float] | None = None, class_speed: dict[str, float] | None = None,
                 observer=None):
        self.backend = backend
        self.max_revisions = max_revisions
        self.stage_mean_s = {**DEFAULT_STAGE_MEAN_S, **(stage_mean_s or {})}
        self.class_speed = class_speed or {"cpu": 1.0}
        self.observer = observer  # observer(stage, seconds, request, missed_stage_deadline) after each stage

    async def _timed(self, name: str, request: Text2SQLRequest, timings: list[dict], make_call):
        sched = sched_for(request, name, self.stage_mean_s, self.class_speed)
        started = time.perf_counter()
        result = await make_call(sched)
        seconds = time.perf_counter() - started
        timings.append({"name": name, "ms": round(seconds * 1000, 1)})
        if self.observer:
            missed = time.time() > absolute_stage_deadline_s(StageCall(**sched))
            self.observer(name, seconds, request, missed)
        return result

    async def answer(self, request: Text2SQLRequest) -> Text2SQLAnswer:
        started = time.perf_counter()
        timings: list[dict] = []
        q, db, b = request.question, request.db_path, self.backend
        linked = await self._timed("schema_linking", request, timings, lambda s: b.link(q, db, s))
        candidates = await self._timed("candidate_generation", request, timings, lambda s: b.generate(q, linked, s))
        candidates = await self._timed("execution", request, timings, lambda s: b.execute(candidates, db, s))
        executed = len({c.sql for c in candidates})
        revised: set[str] = set()
        correction_ms = 0.0
        for _ in range(self.max_revisions):
            # Revise only while no candidate runs: a running candidate already outvotes a repaired one.
            failing = [c for c in candidates if not c.ok and c.sql not in revised]
            if any(c.ok for c in candidates) or not failing or time.time() > request.deadline_s:
                break
            worst = max(failing, key=lambda c: c.mean_logprob)
            revised.add(worst.sql)
            t0 = time.perf_counter()
            fixed = await self._timed("self_correction", request, [], lambda s: b.revise(q, linked, worst, s))
            fixed = (await self._timed("execution", request, [], lambda s: b.execute([fixed], db, s)))[0]
            correction_ms += (time.perf_counter() - t0) * 1000
            executed += fixed.sql not in {c.sql for c in candidates}
            candidates.append(fixed)
        timings.append({"name": "self_correction", "ms": round(correction_ms, 1)})
        selection = await self._timed("selection", request, timings, lambda s: b.select(candidates, s))
        chosen = selection.chosen
        result = chosen.result
        return Text2SQLAnswer(
            sql=chosen.sql,
            columns=result.columns if result else [],
            rows=[list(r) for r in result.rows] if result else [],
            stages=timings,
            latency_ms=(time.perf_counter() - started) * 1000,
            candidates=executed,
            votes=selection.votes,
            error=None if result else chosen.error,
            deadline_missed=time.time() > request.deadline_s,
            candidate_sql=[{"sql": c.sql, "origin": c.origin, "ok": c.ok, "errorKind": c.error_kind,
                            "meanLogprob": round(c.mean_logprob, 3)} for c in candidates],
        )


def answer_direct(pipeline: Text2SQLPipeline, request: Text2SQLRequest) -> Text2SQLAnswer:
    return asyncio.run(pipeline.answer(request))

