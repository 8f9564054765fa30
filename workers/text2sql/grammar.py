"""Constrained decoding: the model may only write SQL of a small read-only subset over the linked schema.

The subset (single SELECT; aggregates; one optional JOIN ... ON; WHERE with AND/OR of
comparisons, LIKE, IN, BETWEEN, IS NULL; GROUP BY with HAVING; ORDER BY; LIMIT) is
written as one regular expression whose identifiers are the linked tables and
columns. The ``regex`` module's partial matching tells whether a text can still grow
into a match, so at each step the logits processor keeps only the tokens whose text
keeps the query a valid prefix, and allows the end token once the query is complete.
Nothing here knows any particular database or question: the pattern is built from
whatever schema it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import regex

W, S = r"\s+", r"\s*"
NAME = r"[A-Za-z_][A-Za-z_0-9]*"


def _alternation(names: list[str]) -> str:
    # Longest first, so that a name that is a prefix of another never shadows it; case-sensitive
    # (keywords are not): identifiers and literals must be spelled as the database spells them.
    return "(?-i:" + "|".join(regex.escape(n) for n in sorted(set(names), key=lambda n: (-len(n), n))) + ")"


@dataclass(frozen=True)
class GrammarSpec:
    """What a query may name: tables with typed columns, and the literals it may compare with.

    ``tables``: (table, ((column, "text" | "number"), ...)) pairs. ``values``: (table, column, value)
    for stored values the question mentions — such a value may only be compared with its own
    column. ``strings``: other text the question quotes or capitalises (any text column);
    ``numbers``: numbers in the question (any number column). Grounding literals in the
    question stops a small model from filtering on values nobody asked about.
    """

    tables: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    values: tuple[tuple[str, str, str], ...] = ()
    strings: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()

    def columns(self, kind: str | None = None) -> list[str]:
        """Every column, bare and qualified (of one kind, or all)."""
        names = []
        for table, cols in self.tables:
            names += [n for c, k in cols if kind in (None, k) for n in (c, f"{table}.{c}")]
        return names


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@lru_cache(maxsize=256)
def sql_pattern(spec: GrammarSpec) -> regex.Pattern:
    """The compiled pattern of the SQL subset that ``spec`` allows."""
    table = _alternation([t for t, _ in spec.tables])
    col = _alternation(spec.columns())
    agg = rf"(?:COUNT{S}\({S}(?:\*|(?:DISTINCT{W})?{col}){S}\)|(?:SUM|AVG|MIN|MAX){S}\({S}{col}{S}\))"
    expr = rf"(?:{agg}|{col})"
    sel = rf"(?:\*|{expr}(?:{W}AS{W}{NAME})?)"
    eq, cmp = r"(?:=|!=|<>)", r"(?:=|!=|<>|<=|>=|<|>)"
    conds = []
    for t, c, value in spec.values:
        conds.append(rf"{_alternation([c, f'{t}.{c}'])}(?:{S}{eq}{S}|{W}(?:NOT{W})?LIKE{W}){_alternation([_quote(value)])}")
    text_cols, number_cols = spec.columns("text"), spec.columns("number")
    if spec.strings and text_cols:
        strings = _alternation([_quote(v) for v in spec.strings])
        conds.append(rf"{_alternation(text_cols)}(?:{S}{eq}{S}|{W}(?:NOT{W})?LIKE{W}){strings}")
    number = _alternation(list(spec.numbers)) if spec.numbers else None
    if number and number_cols:
        conds.append(rf"{_alternation(number_cols)}(?:{S}{cmp}{S}{number}|{W}BETWEEN{W}{number}{W}AND{W}{number})")
    join = rf"(?:{W}(?:INNER{W}|LEFT{W})?JOIN{W}{table}{W}ON{W}{col}{S}={S}{col})"
    cond = "(?:" + "|".join(conds) + ")"
    where = rf"(?:{W}WHERE{W}{cond}(?:{W}(?:AND|OR){W}{cond})*)?" if conds else ""
    having = rf"(?:{W}HAVING{W}{agg}{S}{cmp}{S}{number})?" if number else ""
    group = rf"(?:{W}GROUP{W}BY{W}{col}(?:{S},{S}{col})*{having})?"
    order_item = rf"{expr}(?:{W}(?:ASC|DESC))?"
    order = rf"(?:{W}ORDER{W}BY{W}{order_item}(?:{S},{S}{order_item})*)?"
    limit = rf"(?:{W}LIMIT{W}\d+)?"
    query = (rf"SELECT{W}(?:DISTINCT{W})?{sel}(?:{S},{S}{sel})*{W}FROM{W}{table}{join}?"
             rf"{where}{group}{order}{limit}{S};?")
    return regex.compile(query, regex.IGNORECASE)


@lru_cache(maxsize=4)
def _token_texts(tokenizer) -> tuple[str, ...]:
    """The text each vocabulary entry adds when appended (computed once per tokenizer)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return tuple(tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in tokens)


class SQLGrammarProcessor:
    """A transformers-style logits processor ``(input_ids, scores) -> scores`` that enforces ``pattern``.

    ``prefix`` is text already forced at the end of the prompt (e.g. ``"SELECT"``); the
    generated text continues it. Only the ``top_k`` most likely tokens are tested first;
    if none fits, the whole vocabulary is searched, so the constraint never dead-ends
    while a valid continuation exists.
    """

    def __init__(self, tokenizer, pattern: regex.Pattern, prefix: str = "", top_k: int = 48):
        self.tokenizer = tokenizer
        self.pattern = pattern
        self.prefix = prefix
        self.top_k = top_k
        self.texts = _token_texts(tokenizer)
        self.end_ids = {i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
                        if isinstance(i, int) and i >= 0}
        self.prompt_len: int | None = None

    def text_so_far(self, ids) -> str:
        return self.prefix + self.tokenizer.decode(ids, skip_special_tokens=True)

    def allowed(self, text: str, token_ids) -> list[int]:
        complete = self.pattern.fullmatch(text) is not None
        keep = []
        for token_id in token_ids:
            token_id = int(token_id)
            if token_id in self.end_ids:
                if complete:
                    keep.append(token_id)
            elif self.texts[token_id] and self.pattern.fullmatch(text + self.texts[token_id], partial=True):
                keep.append(token_id)
        return keep

    def __call__(self, input_ids, scores):
        import torch

        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        for row in range(scores.shape[0]):
            text = self.text_so_far(input_ids[row, self.prompt_len:].tolist())
            top = torch.topk(scores[row], min(self.top_k, scores.shape[1])).indices.tolist()
            keep = self.allowed(text, top)
            if not keep:
                ranked = torch.argsort(scores[row], descending=True).tolist()
                keep = self.allowed(text, ranked[self.top_k:])[:1] or sorted(self.end_ids)[:1]
            mask = torch.full_like(scores[row], -math.inf)
            mask[keep] = 0.0
            scores[row] = scores[row] + mask
        return scores
