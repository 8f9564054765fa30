"""Constrained decoding: the model may only write SQL of a small read-only subset over the linked schema.

The subset (single SELECT; aggregates; a foreign-key JOIN; WHERE with AND/OR of
comparisons; GROUP BY with HAVING; ORDER BY with LIMIT) is written as one regular
expression whose identifiers are the linked tables and columns, whose literals come
from the question, and whose clauses the question's wording allows ("how many" ->
COUNT, "each" -> GROUP BY, "more than" -> >). The ``regex`` module's partial matching tells whether a text can still grow
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


# English cues of a question -> what its query may use. Generic: they read the question's wording, never a
# database's names. A query without the cue for a clause cannot use that clause.
_CUES = {
    "COUNT": ("how many", "number of", "count", "most", "fewest", "least"),
    "AVG": ("average", "mean"),
    "SUM": ("total", "sum", "combined", "altogether"),
    "MINMAX": ("highest", "lowest", "maximum", "minimum", "max", "min", "largest", "smallest", "biggest",
               "most", "least", "fewest", "earliest", "latest", "oldest", "newest", "youngest", "cheapest",
               "expensive", "longest", "shortest", "best", "worst", "top", "first", "last"),
    "GROUP": ("each", "per", "every", "grouped", "breakdown", "most", "fewest"),
    "ORDER": ("order", "ordered", "sort", "sorted", "alphabetical", "alphabetically", "rank", "ranked"),
}
_OPS = {
    ">": ("more than", "greater than", "over", "above", "after", "exceed", "exceeds", "higher than", "larger than",
          "bigger than", "later than", "longer than"),
    "<": ("less than", "fewer than", "under", "below", "before", "lower than", "smaller than", "earlier than",
          "shorter than", "cheaper than"),
    ">=": ("at least", "or more", "no less than"),
    "<=": ("at most", "or less", "or fewer", "no more than", "up to"),
    "!=": ("not", "other than", "except"),
}


def _has(text: str, phrases) -> int:
    return sum(text.count(f" {p} ") for p in phrases)


@dataclass(frozen=True)
class QueryShape:
    """Which clauses and operators a question's wording allows (see ``_CUES``)."""

    aggregates: tuple[str, ...]
    group_by: bool
    order_by: bool  # ORDER BY ... LIMIT: sorting or "the highest/lowest ..."
    ops: tuple[str, ...]
    sort_any: bool = True  # False: only a superlative asks for order, so the key is a quantity

    @classmethod
    def of(cls, question: str) -> "QueryShape":
        text = " " + " ".join(regex.findall(r"[a-z0-9]+", question.lower())) + " "
        aggs = [a for a in ("COUNT", "AVG", "SUM") if _has(text, _CUES[a])]
        extreme = bool(_has(text, _CUES["MINMAX"]))
        aggs += ["MIN", "MAX"] if extreme else []
        cued = {op: _has(text, phrases) for op, phrases in _OPS.items()}
        ops = [op for op, n in cued.items() if n]
        numbers = len(regex.findall(r"\b\d+(?:\.\d+)?\b", question))
        if set(ops) <= {"!="} or numbers > sum(cued.values()):
            ops.append("=")  # a number with no comparison word is compared for equality ("not" may be "= 0")
        sort = bool(_has(text, _CUES["ORDER"]))
        return cls(tuple(aggs), bool(_has(text, _CUES["GROUP"])), extreme or sort, tuple(ops), sort)


@dataclass(frozen=True)
class GrammarSpec:
    """What a query may name: tables with typed columns, joins, and the literals it may compare with.

    ``tables``: (table, ((column, "text" | "number"), ...)); ``joins``: foreign keys (table, column,
    referenced table, referenced column) — the only joins allowed. ``values``: (table, column, value)
    for stored values the question mentions, comparable only with their own column; ``strings``:
    other text the question quotes or capitalises (any text column); ``numbers``: the question's
    numbers, comparable with ``number_columns`` (all number columns when empty). ``select_columns``:
    (table, column) a query may return or group by (the question's columns and each table's label).
    Grounding names and literals in the question stops a small model from filtering on values, or
    returning columns, that nobody asked about.
    """

    tables: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    joins: tuple[tuple[str, str, str, str], ...] = ()
    values: tuple[tuple[str, str, str], ...] = ()
    strings: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    number_columns: tuple[tuple[str, str], ...] = ()
    select_columns: tuple[tuple[str, str], ...] = ()
    shape: QueryShape = QueryShape(("COUNT", "AVG", "SUM", "MIN", "MAX"), True, True, ("=", "!=", "<", ">", "<=", ">="))

    def kinds(self) -> dict[tuple[str, str], str]:
        return {(t, c): k for t, cols in self.tables for c, k in cols}

    def from_clauses(self) -> list[tuple[list[str], str]]:
        """(tables, FROM-clause pattern): each table alone, and each foreign-key join in both orders."""
        clauses = [([t], regex.escape(t)) for t, _ in self.tables]
        for t, c, rt, rc in self.joins:
            on = _alternation([f"{t}.{c}"]) + rf"{S}={S}" + _alternation([f"{rt}.{rc}"])
            on_reversed = _alternation([f"{rt}.{rc}"]) + rf"{S}={S}" + _alternation([f"{t}.{c}"])
            for a, b in ((t, rt), (rt, t)):
                clauses.append(([a, b], rf"{regex.escape(a)}{W}(?:INNER{W})?JOIN{W}{regex.escape(b)}{W}ON{W}"
                                        rf"(?:{on}|{on_reversed})"))
        return clauses


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _names(pairs: list[tuple[str, str]], visible: list[tuple[str, str]]) -> list[str]:
    """Qualified names of ``pairs``, plus the bare name where no other visible table has that column."""
    bare_count: dict[str, int] = {}
    for _, c in visible:
        bare_count[c] = bare_count.get(c, 0) + 1
    return [n for t, c in pairs for n in ([f"{t}.{c}"] + ([c] if bare_count[c] == 1 else []))]


def _query(spec: GrammarSpec, tables: list[str], from_clause: str) -> str:
    kinds = spec.kinds()
    visible = [(t, c) for t in tables for (tt, c) in kinds if tt == t]
    shape = spec.shape
    any_col = _alternation(_names(visible, visible))
    numeric = [p for p in visible if kinds[p] == "number"]
    selectable = [p for p in visible if p in spec.select_columns] or visible
    sel_col = _alternation(_names(selectable, visible))
    aggs = []
    if "COUNT" in shape.aggregates:
        aggs.append(rf"COUNT{S}\({S}(?:\*|DISTINCT{W}{any_col}){S}\)")
    funcs = [f for f in ("SUM", "AVG", "MIN", "MAX") if f in shape.aggregates]
    if funcs and numeric:
        aggs.append(rf"(?:{'|'.join(funcs)}){S}\({S}{_alternation(_names(numeric, visible))}{S}\)")
    agg = "(?:" + "|".join(aggs) + ")" if aggs else None
    item = rf"(?:{agg}|{sel_col})" if agg else sel_col
    sel = rf"{item}(?:{W}AS{W}{NAME})?"

    eq = r"(?:=|!=)" if "!=" in shape.ops else "="
    conds = []
    for t, c, value in spec.values:
        if t in tables:
            conds.append(rf"{_alternation(_names([(t, c)], visible))}{S}{eq}{S}{_alternation([_quote(value)])}")
    text_cols = [p for p in visible if kinds[p] == "text"]
    if spec.strings and text_cols:
        conds.append(rf"{_alternation(_names(text_cols, visible))}{S}{eq}{S}"
                     rf"{_alternation([_quote(v) for v in spec.strings])}")
    number = _alternation(list(spec.numbers)) if spec.numbers else None
    compared = [p for p in numeric if p in spec.number_columns] or [
        p for p in numeric if not p[1].lower().endswith("id")]
    if number and compared:
        op = "(?:" + "|".join(regex.escape(o) for o in sorted(shape.ops, key=len, reverse=True)) + ")"
        conds.append(rf"{_alternation(_names(compared, visible))}{S}{op}{S}{number}")
    cond = "(?:" + "|".join(conds) + ")" if conds else None
    where = rf"(?:{W}WHERE{W}{cond}(?:{W}(?:AND|OR){W}{cond})*)?" if cond else ""
    group = ""
    if shape.group_by:
        having = ""
        if agg and number:
            op = "(?:" + "|".join(regex.escape(o) for o in sorted(shape.ops, key=len, reverse=True)) + ")"
            having = rf"(?:{W}HAVING{W}{agg}{S}{op}{S}{number})?"
        group = rf"(?:{W}GROUP{W}BY{W}{sel_col}(?:{S},{S}{sel_col})?{having})?"
    order = ""
    if shape.order_by:
        # "the most expensive", "the highest score": a superlative orders by a quantity, and takes
        # the top one or as many as the question says.
        keys = [any_col] if shape.sort_any or not numeric else [_alternation(_names(numeric, visible))]
        key = "(?:" + "|".join(keys + ([agg] if agg else [])) + ")"
        limit = _alternation(sorted(set(spec.numbers) | {"1"}))
        order = rf"(?:{W}ORDER{W}BY{W}{key}(?:{W}(?:ASC|DESC))?(?:{W}LIMIT{W}{limit})?)?"
    return (rf"SELECT{W}(?:DISTINCT{W})?{sel}(?:{S},{S}{sel})*{W}FROM{W}{from_clause}"
            rf"{where}{group}{order}")


@lru_cache(maxsize=256)
def sql_pattern(spec: GrammarSpec) -> regex.Pattern:
    """The compiled pattern of the SQL subset that ``spec`` allows: one alternative per FROM clause."""
    queries = [_query(spec, tables, clause) for tables, clause in spec.from_clauses()]
    return regex.compile(rf"(?:{'|'.join(queries)}){S};?", regex.IGNORECASE)


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
