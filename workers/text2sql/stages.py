"""The Text-to-SQL stages as plain Python classes (used directly by ``--direct`` and wrapped by Ray Serve).

schema linking -> candidate generation (n candidates, grammar-constrained) -> execution
-> self-correction of failing candidates (bounded) -> selection by execution-result vote.
Everything a stage takes or returns is a picklable dataclass, so a Ray Serve handle can
carry it between replicas.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tessera.api import metrics as catalogue
from tessera.workers.metrics import make_metric
from tessera.workers.text2sql import prompts
from tessera.workers.text2sql.grammar import GrammarLogitsProcessor, GrammarSpec, sql_grammar
from tessera.workers.text2sql.sandbox import ExecutionResult, SQLError, SQLSandbox
from tessera.workers.text2sql.schema import LinkedSchema, Schema

STOP = [";", "\n\n", "<|im_end|>"]


@dataclass
class Candidate:
    sql: str
    mean_logprob: float
    origin: str  # greedy, sample, revision or single-shot
    result: ExecutionResult | None = None
    error: str | None = None
    error_kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass
class LLMCall:
    """One LLM call: chat messages, whether to constrain to the SQL grammar over ``tables``, and sampling."""

    messages: list[dict]
    grammar: GrammarSpec | None  # what the SQL may name; None: free text (the single-shot baseline)
    temperature: float = 0.0
    seed: int | None = None
    max_new_tokens: int = 64
    origin: str = "greedy"


@lru_cache(maxsize=32)
def load_schema(db_path: str) -> Schema:
    return Schema.load(db_path)


class SchemaLinker:
    """Stage 1: the tables, columns and stored values a question needs (lexical; see schema.py)."""

    def __init__(self, max_tables: int = 3):
        self.max_tables = max_tables

    def link(self, question: str, db_path: str) -> LinkedSchema:
        return load_schema(str(db_path)).link(question, self.max_tables)


class SQLWriter:
    """The LLM side of generation and revision: runs one LLMCall on an LLMEngine."""

    def __init__(self, engine, speculative=None):
        self.engine = engine
        self.speculative = speculative  # a SpecDecConfig: used by greedy calls (the engine samples without it)

    def write(self, call: LLMCall) -> Candidate:
        prompt = self.engine.chat_prompt(call.messages)
        if call.grammar is None:
            out = self.engine.generate(prompt, max_new_tokens=call.max_new_tokens, temperature=call.temperature,
                                       seed=call.seed, speculative=self.speculative)
            return Candidate(prompts.extract_sql(out.text), out.mean_logprob, call.origin)
        out = self.engine.generate(prompt, max_new_tokens=call.max_new_tokens, stop=STOP,
                                   temperature=call.temperature, seed=call.seed, speculative=self.speculative,
                                   logits_processor=GrammarLogitsProcessor(self.engine.tokenizer,
                                                                           sql_grammar(call.grammar)))
        return Candidate(out.text.strip().rstrip(";"), out.mean_logprob, call.origin)


class CandidateGenerator:
    """Stage 2: the LLM calls for n candidates, with few-shot examples.

    Candidates alternate between two grammars over the linked schema: one narrowed to the clauses
    the question's wording cues, and the open one (every clause; only the schema and the question's
    literals bound it). The first of each is greedy, the rest sampled. Where the cues read the
    question right, the narrowed candidates agree and win the vote (a tie goes to the likelier
    candidate, and a narrower grammar makes its tokens likelier); where the cues miss a phrasing,
    the open candidates can still write the query.
    """

    def __init__(self, fewshot_db_dir: str | Path, n: int = 4, k_examples: int = 3, temperature: float = 0.7,
                 max_new_tokens: int = 64):
        self.fewshot_db_dir = str(fewshot_db_dir)
        self.n, self.k_examples, self.temperature, self.max_new_tokens = n, k_examples, temperature, max_new_tokens

    def examples(self, question: str) -> list[prompts.Example]:
        return prompts.select_examples(question, prompts.load_examples(self.fewshot_db_dir), self.k_examples)

    def calls(self, question: str, linked: LinkedSchema, n: int | None = None) -> list[LLMCall]:
        messages = prompts.generation_messages(question, linked, self.examples(question))
        grammars = (linked.grammar_spec(question), linked.grammar_spec(question, shaped=False))
        calls = []
        for i in range(self.n if n is None else n):
            greedy = i < 2
            calls.append(LLMCall(messages, grammars[i % 2], 0.0 if greedy else self.temperature, seed=i,
                                 max_new_tokens=self.max_new_tokens,
                                 origin=("greedy" if greedy else "sample") + ("-open" if i % 2 else "")))
        return calls

    def single_shot_call(self, question: str, db_path: str, max_new_tokens: int = 96) -> LLMCall:
        """The baseline: whole schema, no examples, greedy, no grammar."""
        return LLMCall(prompts.single_shot_messages(question, load_schema(str(db_path))), None, 0.0,
                       max_new_tokens=max_new_tokens, origin="single-shot")


class SelfCorrector:
    """Stage 4: the LLM call that revises a failing candidate with the database's error in the prompt."""

    def __init__(self, generator: CandidateGenerator):
        self.generator = generator

    def call(self, question: str, linked: LinkedSchema, failed: Candidate) -> LLMCall:
        messages = prompts.revision_messages(question, linked, self.generator.examples(question), failed.sql,
                                             failed.error or "unknown error")
        return LLMCall(messages, linked.grammar_spec(question), 0.0, max_new_tokens=self.generator.max_new_tokens,
                       origin="revision")


class SQLExecutor:
    """Stage 3: runs candidates in the read-only sandbox (first without the columns that only repeat what
    the query compared, see ``without_compared_columns``); identical SQL runs once."""

    def __init__(self, timeout_s: float = 2.0, max_rows: int = 1000):
        self.timeout_s, self.max_rows = timeout_s, max_rows

    def execute(self, candidates: list[Candidate], db_path: str) -> list[Candidate]:
        sandbox = SQLSandbox(db_path, self.timeout_s, self.max_rows)
        seen: dict[str, Candidate] = {}
        done = []
        for cand in candidates:
            cand = Candidate(without_compared_columns(cand.sql), cand.mean_logprob, cand.origin)
            if cand.sql in seen:
                first = seen[cand.sql]
                done.append(Candidate(cand.sql, cand.mean_logprob, cand.origin, first.result, first.error,
                                      first.error_kind))
                continue
            make_metric(catalogue.WORKER_SQL_CANDIDATES).inc()
            try:
                cand = Candidate(cand.sql, cand.mean_logprob, cand.origin, sandbox.execute(cand.sql))
            except SQLError as err:
                make_metric(catalogue.WORKER_SQL_ERRORS).labels(kind=err.kind).inc()
                cand = Candidate(cand.sql, cand.mean_logprob, cand.origin, None, str(err), err.kind)
            seen[cand.sql] = cand
            done.append(cand)
        return done


@dataclass
class Selection:
    chosen: Candidate
    votes: int
    groups: int = 0


_SELECT = re.compile(r"\s*SELECT\s+(DISTINCT\s+)?(.*?)(\s+FROM\s.*)", re.I | re.S)


def _items(select_list: str) -> list[str]:
    """The returned expressions of a SELECT list, lower-case, without their aliases."""
    return [re.sub(r"\s+AS\s+\w+$", "", i.strip(), flags=re.I).lower() for i in select_list.split(",")]


def malformed(sql: str) -> bool:
    """A query that runs but cannot be a sensible answer: it groups by a column it does not return,
    or returns one column twice (a small model's habit of listing columns until it stops)."""
    match = _SELECT.match(sql)
    if not match:
        return False
    items = _items(match.group(2))
    if len(items) != len(set(items)):
        return True
    group = re.search(r"\bGROUP\s+BY\s+(.*?)(?:\s+HAVING\b|\s+ORDER\b|\s+LIMIT\b|$)", sql, re.I | re.S)
    bare = {i.split(".")[-1] for i in items}
    return bool(group) and any(g.strip().lower().split(".")[-1] not in bare for g in group.group(1).split(","))


def without_compared_columns(sql: str) -> str:
    """``sql`` without the returned columns that, beside another one, only repeat what the query
    compared: a column its WHERE compares, or the one it takes the top rows by ("the most experienced
    doctor" is the doctor, not the doctor and the experience). A small model adds the column it compared
    after the one asked for; grouped or aggregating queries are left as they are."""
    match = _SELECT.match(sql)
    if not match or re.search(r"\bGROUP\s+BY\b", sql, re.I):
        return sql
    distinct, select_list, rest = match.groups()
    raw = [i.strip() for i in select_list.split(",")]
    where = re.search(r"\bWHERE\s+(.*?)(?:\s+ORDER\b|\s+LIMIT\b|$)", rest, re.I | re.S)
    compared = {m.lower().split(".")[-1] for m in re.findall(r"([\w.]+)\s*[<>=!]", where.group(1) if where else "")}
    top = re.search(r"\bORDER\s+BY\s+([\w.]+)(?:\s+(?:ASC|DESC))?\s+LIMIT\b", rest, re.I)
    compared |= {top.group(1).lower().split(".")[-1]} if top else set()
    kept = [r for r, i in zip(raw, _items(select_list)) if "(" in i or i.split(".")[-1] not in compared]
    if len(raw) < 2 or not kept or len(kept) == len(raw):
        return sql
    return f"SELECT {distinct or ''}{', '.join(kept)}{rest}"


class Selector:
    """Stage 5: vote by execution result; ties by the best mean log-probability.

    A result with no rows counts half a vote: a tiny model's over-tight filter often
    agrees with itself on "nothing", which is rarely the answer a question expects.
    A malformed query's vote counts a quarter.
    """

    def select(self, candidates: list[Candidate]) -> Selection:
        if not candidates:
            raise ValueError("candidates: none to select from")
        groups: dict[tuple, list[Candidate]] = defaultdict(list)
        for cand in candidates:
            if cand.ok:
                groups[cand.result.result_key].append(cand)
        if not groups:
            return Selection(max(candidates, key=lambda c: c.mean_logprob), 0, 0)

        def score(members: list[Candidate]) -> tuple[float, float]:
            weight = 0.5 if not members[0].result.rows else 1.0
            votes = sum(0.25 if malformed(c.sql) else 1.0 for c in members)
            return (weight * votes, max(c.mean_logprob for c in members))

        best = max(groups.values(), key=score)
        return Selection(max(best, key=lambda c: c.mean_logprob), len(best), len(groups))
