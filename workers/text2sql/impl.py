"""The Text-to-SQL stages as implementations a workflow's stages name (``implementation:``).

Each is ``def stage(ctx: StageContext)`` (or ``async def``) as ``tessera.workers.runtime.context``
documents; outputs are plain JSON. The request's ``input`` is the question (a string, or an object
with ``question``); ``params.database`` names the SQLite file (opened read-only) in every stage.

    link_schema          -> {"kind": "linked", "question", "tables", "values"}
    generate_candidates  -> {"kind": "candidates", "candidates": [{"sql", "origin", "meanLogprob"}]}   (llm)
    execute_candidates   -> {"kind": "executed", "candidates": [{... "ok", "columns", "rows", "error"}]}
    revise               -> the executed candidates, plus a revision of a failing one when none runs (llm)
    select_answer        -> {"sql", "columns", "rows", "votes", "candidates", "error"}

A stage finds what it needs among its dependencies' outputs by ``kind``, so the stage names and
the wiring are the workflow's to choose. ``generate_candidates`` writes ``params.candidates``
(default 1) per call, numbered from ``fan_index`` times that count, so ``fanOut: 4`` with one
candidate per call and one call with ``candidates: 4`` produce the same set: the first two
greedy, the rest sampled, alternating between the question-shaped and the open grammar (see
stages.CandidateGenerator). ``revise`` is meant to run with ``iterations``: each iteration
repairs at most one candidate, and stops once one runs or the deadline has passed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tessera.workers.runtime.context import StageContext
from tessera.workers.text2sql import prompts
from tessera.workers.text2sql.grammar import sql_grammar
from tessera.workers.text2sql.sandbox import ExecutionResult, result_key
from tessera.workers.text2sql.schema import LinkedSchema, ValueMatch
from tessera.workers.text2sql.stages import STOP, Candidate, CandidateGenerator, Selector, SQLExecutor, load_schema

LLM_STOP = [s for s in STOP if not s.startswith("<|")]  # the model deployment adds its own end token


def _database(ctx: StageContext) -> str:
    database = ctx.params.get("database")
    if not isinstance(database, str) or not database:
        raise ValueError(f"stage {ctx.stage}: params.database: required, the path of the SQLite file")
    if not Path(database).is_file():
        raise ValueError(f"stage {ctx.stage}: params.database: {database} is not a file")
    return database


def _question(ctx: StageContext) -> str:
    question = ctx.input.get("question") if isinstance(ctx.input, dict) else ctx.input
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"stage {ctx.stage}: input: the question must be a non-empty string "
                         "(or an object with a non-empty 'question')")
    return question.strip()


def _find(ctx: StageContext, kind: str) -> list[dict]:
    """Every dependency output of this kind (a fanned-out dependency gives several), in order."""
    found = []
    for output in ctx.outputs.values():
        for item in output if isinstance(output, list) else [output]:
            if isinstance(item, dict) and item.get("kind") == kind:
                found.append(item)
    return found


def _one(ctx: StageContext, *kinds: str) -> dict:
    for kind in kinds:
        found = _find(ctx, kind)
        if found:
            return found[-1]
    raise ValueError(f"stage {ctx.stage}: needs a dependency whose output is of kind {' or '.join(kinds)}")


def _linked(ctx: StageContext, database: str) -> tuple[str, LinkedSchema]:
    linked = _one(ctx, "linked")
    schema = load_schema(database)
    unknown = sorted(set(linked["tables"]) - set(schema.tables))
    if unknown:
        raise ValueError(f"stage {ctx.stage}: linked table {unknown[0]!r} is not in {Path(database).name}")
    return linked["question"], LinkedSchema(schema, linked["tables"], [ValueMatch(*v) for v in linked["values"]])


def _generator(ctx: StageContext) -> CandidateGenerator:
    fewshot_dir = ctx.params.get("fewshotDbDir")
    if fewshot_dir is None:
        from tessera.workers.text2sql.data.generate import ensure_built

        fewshot_dir = ensure_built()
    return CandidateGenerator(fewshot_dir, temperature=float(ctx.params.get("temperature", 0.7)),
                              max_new_tokens=int(ctx.params.get("maxTokens", 64)))


async def _write(ctx: StageContext, messages: list[dict], grammar, temperature: float,
                 max_tokens: int) -> tuple[str, float]:
    """(SQL, mean log-probability) from the stage's model: the few-shot examples go as earlier chat turns,
    as the in-process SQLWriter sends them. An engine that reports no likelihood counts as 0.0."""
    if ctx.llm is None:
        raise ValueError(f"stage {ctx.stage}: needs a model (set the stage's model)")
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    turns = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
    out = await ctx.llm.generate(turns[-1]["content"], system=system, history=turns[:-1], max_tokens=max_tokens,
                                 temperature=temperature, stop=LLM_STOP, grammar=sql_grammar(grammar))
    return out.text.strip().rstrip(";").strip(), out.mean_logprob or 0.0


def link_schema(ctx: StageContext) -> dict[str, Any]:
    """The tables and stored values the question needs (``params.maxTables``, default 3)."""
    question, database = _question(ctx), _database(ctx)
    linked = load_schema(database).link(question, int(ctx.params.get("maxTables", 3)))
    return {"kind": "linked", "question": question, "tables": linked.tables,
            "values": [[m.table, m.column, m.value] for m in linked.values], "schema": linked.describe()}


async def generate_candidates(ctx: StageContext) -> dict[str, Any]:
    """``params.candidates`` SQL candidates (default 1) from the stage's model, held to the grammar."""
    question, linked = _linked(ctx, _database(ctx))
    count = int(ctx.params.get("candidates", 1))
    if not 1 <= count <= 16:
        raise ValueError(f"stage {ctx.stage}: params.candidates: must be between 1 and 16, got {count}")
    generator = _generator(ctx)
    first = ctx.fan_index * count
    calls = generator.calls(question, linked, first + count)[first:]
    candidates = []
    for call in calls:
        sql, logprob = await _write(ctx, call.messages, call.grammar, call.temperature, call.max_new_tokens)
        candidates.append({"sql": sql, "origin": call.origin, "meanLogprob": logprob})
    return {"kind": "candidates", "candidates": candidates}


def _jsonable(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def _executed(candidate: Candidate) -> dict[str, Any]:
    result = candidate.result
    return {"sql": candidate.sql, "origin": candidate.origin, "meanLogprob": candidate.mean_logprob, "ok": candidate.ok,
            "columns": result.columns if result else [],
            "rows": [[_jsonable(v) for v in row] for row in result.rows] if result else [],
            "truncated": bool(result and result.truncated), "error": candidate.error, "errorKind": candidate.error_kind}


def _restored(item: dict[str, Any]) -> Candidate:
    result = None
    if item["ok"]:
        rows = [tuple(row) for row in item["rows"]]
        result = ExecutionResult(item["columns"], rows, item["truncated"], 0.0, result_key(rows))
    return Candidate(item["sql"], item.get("meanLogprob", 0.0), item["origin"], result, item["error"], item["errorKind"])


def _run(ctx: StageContext, database: str, candidates: list[Candidate]) -> list[Candidate]:
    executor = SQLExecutor(float(ctx.params.get("timeoutS", 2.0)), int(ctx.params.get("maxRows", 1000)))
    return executor.execute(candidates, database)


def execute_candidates(ctx: StageContext) -> dict[str, Any]:
    """Every candidate of the dependencies, run in the read-only sandbox (identical SQL runs once);
    ``params.timeoutS`` (default 2) and ``params.maxRows`` (default 1000) bound each query."""
    database = _database(ctx)
    candidates = [Candidate(c["sql"], c.get("meanLogprob", 0.0), c["origin"])
                  for out in _find(ctx, "candidates") for c in out["candidates"]]
    if not candidates:
        raise ValueError(f"stage {ctx.stage}: needs a dependency whose output is of kind candidates")
    return {"kind": "executed", "candidates": [_executed(c) for c in _run(ctx, database, candidates)]}


async def revise(ctx: StageContext) -> dict[str, Any]:
    """The executed candidates (this stage's previous iteration's, else the dependency's), plus, when
    none of them runs and the deadline allows, the model's repair of the likeliest failing one."""
    database = _database(ctx)
    executed = ctx.previous if isinstance(ctx.previous, dict) else _one(ctx, "executed")
    items = list(executed["candidates"])
    revised = set(executed.get("revised", []))
    failing = [c for c in items if not c["ok"] and c["sql"] not in revised]
    if any(c["ok"] for c in items) or not failing or time.time() > ctx.deadline_s:
        return {**executed, "kind": "executed"}
    question, linked = _linked(ctx, database)
    worst = max(failing, key=lambda c: c.get("meanLogprob", 0.0))  # as Text2SQLPipeline: the likeliest
    generator = _generator(ctx)
    messages = prompts.revision_messages(question, linked, generator.examples(question), worst["sql"],
                                         worst["error"] or "unknown error")
    sql, logprob = await _write(ctx, messages, linked.grammar_spec(question), 0.0, generator.max_new_tokens)
    fixed = _run(ctx, database, [Candidate(sql, logprob, "revision")])[0]
    return {"kind": "executed", "candidates": items + [_executed(fixed)], "revised": sorted(revised | {worst["sql"]})}


def select_answer(ctx: StageContext) -> dict[str, Any]:
    """The answer chosen by execution-result vote (stages.Selector) among every executed candidate."""
    found = _find(ctx, "executed")
    if not found:
        raise ValueError(f"stage {ctx.stage}: needs a dependency whose output is of kind executed")
    # The fullest output: revise's holds every executed candidate and its repairs. Identical SQL from
    # several candidates counts once per candidate: agreement is the vote.
    items = max(found, key=lambda out: len(out["candidates"]))["candidates"]
    selection = Selector().select([_restored(c) for c in items])
    answer = _executed(selection.chosen)
    return {"sql": answer["sql"], "columns": answer["columns"], "rows": answer["rows"], "votes": selection.votes,
            "candidates": len({c["sql"] for c in items}), "error": answer["error"]}
