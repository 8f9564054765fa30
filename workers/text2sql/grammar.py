"""Constrained decoding: the model may only write SQL of a small read-only subset over the linked schema.

The subset (single SELECT; aggregates; a foreign-key JOIN; WHERE with AND/OR of comparisons;
GROUP BY with HAVING; ORDER BY with LIMIT) is written as an EBNF grammar (xgrammar's syntax,
also vLLM's structured outputs) whose identifiers are the linked tables and columns and whose
literals come from the question. A ``QueryShape`` may narrow the clauses to those the question's
wording asks for ("how many" -> COUNT); ``QueryShape.open()`` allows every clause, so only the
schema and the question's literals bound the query. xgrammar compiles the grammar against the
tokenizer and gives a token bitmask per step (``GrammarLogitsProcessor``); a model deployment
with structured outputs takes the same text as ``grammar=``. Nothing here knows any particular
database or question: the grammar is built from whatever schema it is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import regex

from tessera.workers.llm.grammars import grammar_compiler

ALL_AGGREGATES = ("COUNT", "AVG", "SUM", "MIN", "MAX")
ALL_OPS = ("=", "!=", "<", ">", "<=", ">=")
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
    """Which clauses and operators a query may use: all of them (``open()``), or those the question's
    wording cues (``of(question)``, see ``_CUES``)."""

    aggregates: tuple[str, ...]
    group_by: bool
    order_by: bool  # ORDER BY ... LIMIT: sorting or "the highest/lowest ..."
    ops: tuple[str, ...]
    sort_any: bool = True  # False: only a superlative asks for order, so the key is a quantity
    grounded: bool = False  # True: a query compares one of the stored values the question mentions, if any

    @classmethod
    def open(cls) -> "QueryShape":
        return cls(ALL_AGGREGATES, True, True, ALL_OPS)

    @classmethod
    def of(cls, question: str) -> "QueryShape":
        text = " " + " ".join(regex.findall(r"[a-z0-9]+", question.lower())) + " "
        aggs = [a for a in ("COUNT", "AVG", "SUM") if _has(text, _CUES[a])]
        extreme = bool(_has(text, _CUES["MINMAX"]))
        aggs += ["MIN", "MAX"] if extreme else []
        # Measured on the dev set, a 135M model given every operator often reverses "before" or "at least":
        # the shaped grammar keeps the cued ones; a phrasing the cues miss is left to the open candidates.
        cued = {op: _has(text, phrases) for op, phrases in _OPS.items()}
        ops = [op for op, n in cued.items() if n]
        numbers = len(regex.findall(r"\b\d+(?:\.\d+)?\b", question))
        if set(ops) <= {"!="} or numbers > sum(cued.values()):
            ops.append("=")  # a number with no comparison word is compared for equality ("not" may be "= 0")
        sort = bool(_has(text, _CUES["ORDER"]))
        return cls(tuple(aggs), bool(_has(text, _CUES["GROUP"])), extreme or sort, tuple(ops), sort, grounded=True)


@dataclass(frozen=True)
class GrammarSpec:
    """What a query may name: tables with typed columns, joins, and the literals it may compare with.

    ``tables``: (table, ((column, "text" | "number"), ...)); ``joins``: foreign keys (table, column,
    referenced table, referenced column) — the only joins allowed. ``values``: (table, column, value)
    for stored values the question mentions, comparable only with their own column; ``strings``:
    other text the question quotes or capitalises (any text column); ``numbers``: the question's
    numbers, comparable with ``number_columns`` (all number columns when empty). ``select_columns``:
    (table, column) a query may return or group by (the question's columns and each table's label).
    ``keys``: columns that only join rows (ids and foreign keys the question does not name): never
    summed, averaged or sorted by. ``unique``: columns whose stored values are all distinct, so
    grouping one table by them makes groups of one row.
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
    shape: QueryShape = QueryShape.open()
    keys: tuple[tuple[str, str], ...] = ()
    unique: tuple[tuple[str, str], ...] = ()

    def kinds(self) -> dict[tuple[str, str], str]:
        return {(t, c): k for t, cols in self.tables for c, k in cols}

    def from_clauses(self) -> list[tuple[list[str], str, str | None]]:
        """(tables, FROM-clause EBNF, the referenced table of the join): each table alone, and each
        foreign-key join in both orders."""
        clauses = [([t], _lit(t), None) for t, _ in self.tables]
        for t, c, rt, rc in self.joins:
            on = f"({_lit(f'{t}.{c}')} {_EQ} {_lit(f'{rt}.{rc}')} | {_lit(f'{rt}.{rc}')} {_EQ} {_lit(f'{t}.{c}')})"
            for a, b in ((t, rt), (rt, t)):
                clauses.append(([a, b], f'{_lit(a)} " " ("INNER ")? "JOIN " {_lit(b)} " ON " {on}', rt))
        return clauses


_EQ = '" "? "=" " "?'


def _lit(text: str) -> str:
    """An EBNF string literal."""
    return json.dumps(text, ensure_ascii=False)


def _one_of(options) -> str:
    """An EBNF alternation of literal strings, longest first (a name that prefixes another never shadows it)."""
    return "(" + " | ".join(_lit(o) for o in sorted(set(options), key=lambda o: (-len(o), o))) + ")"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _names(pairs: list[tuple[str, str]], visible: list[tuple[str, str]]) -> list[str]:
    """Qualified names of ``pairs``, plus the bare name where no other visible table has that column."""
    bare_count: dict[str, int] = {}
    for _, c in visible:
        bare_count[c] = bare_count.get(c, 0) + 1
    return [n for t, c in pairs for n in ([f"{t}.{c}"] + ([c] if bare_count[c] == 1 else []))]


def _distinct_pair(items: list[str]) -> str:
    """EBNF for one or two of the rules ``items``, comma-separated, never the same twice: a small model
    otherwise repeats one column until it runs out of tokens."""
    if len(items) == 1:
        return f"({items[0]})"
    return "(" + " | ".join(f'{a} (comma ({" | ".join(b for b in items if b != a)}))?' for a in items) + ")"


def _query_rules(spec: GrammarSpec, i: int, tables: list[str], from_clause: str, parent: str | None) -> list[str]:
    """The rules of one query alternative (``q{i}``): the SELECTs over ``tables`` joined by ``from_clause``.

    A query returns one or two columns, one aggregate, or a column and an aggregate; SQL asks the
    last to group by exactly the column it returns, so the grammar writes that GROUP BY itself. It
    may group only by a column whose rows repeat there: one with repeated values, or any column of
    the referenced table of a join.
    """
    kinds = spec.kinds()
    visible = [(t, c) for t in tables for (tt, c) in kinds if tt == t]
    shape = spec.shape
    measures = [p for p in visible if kinds[p] == "number" and p not in spec.keys]
    selectable = [p for p in visible if p in spec.select_columns] or visible
    groupable = [p for p in selectable if p[0] == parent or p not in spec.unique]
    rules = [f"col{i} ::= {_one_of(_names(visible, visible))}"]
    for k, p in enumerate(selectable):
        rules.append(f"s{i}_{k} ::= {_one_of(_names([p], visible))}")
    aggs = []
    if "COUNT" in shape.aggregates:
        aggs.append(f'"COUNT(" ("*" | "DISTINCT " col{i}) ")"')
    funcs = [f for f in ("SUM", "AVG", "MIN", "MAX") if f in shape.aggregates]
    if funcs and measures:
        aggs.append(f'{_one_of(funcs)} "(" {_one_of(_names(measures, visible))} ")"')
    if aggs:
        rules.append(f"agg{i} ::= " + " | ".join(aggs))

    eq = '("=" | "!=")' if "!=" in shape.ops else '"="'
    ops = _one_of(shape.ops)
    own_values = [(t, c, v) for t, c, v in spec.values if t in tables]
    conds = [f'{_one_of(_names([(t, c)], visible))} " "? {eq} " "? {_one_of([_quote(v)])}' for t, c, v in own_values]
    text_cols = [p for p in visible if kinds[p] == "text"]
    if spec.strings and text_cols:
        strings = _one_of([_quote(v) for v in spec.strings])
        conds.append(f'{_one_of(_names(text_cols, visible))} " "? {eq} " "? {strings}')
    compared = [p for p in measures if p in spec.number_columns] or measures
    if spec.numbers and compared:
        conds.append(f'{_one_of(_names(compared, visible))} " "? {ops} " "? number')
    where = ""
    if conds:
        rules.append(f"cond{i} ::= " + " | ".join(conds))
        # At most three conditions: a small model otherwise repeats one until it runs out of tokens.
        # A grounded query starts its WHERE with a stored value the question mentions ("by Bruno Novak").
        first = f"value{i}" if shape.grounded and spec.values else f"cond{i}"
        if first != f"cond{i}":
            rules.append(f"{first} ::= " + " | ".join(conds[:len(own_values)]))
        rules.append(f'where{i} ::= " WHERE " {first} (and_or cond{i} (and_or cond{i})?)?')
        where = f" where{i}" + ("" if first != f"cond{i}" else "?")
    direction = '(" ASC" | " DESC")?'
    limit = f'(" LIMIT " {_one_of(sorted(set(spec.numbers) | {"1"}))})?'
    grouped = []
    if aggs and shape.group_by:
        having = f' (" HAVING " agg{i} " "? {ops} " "? number)?' if spec.numbers else ""
        order = f' (" ORDER BY " agg{i} {direction} {limit})?' if shape.order_by else ""
        for k, p in enumerate(selectable):
            if p in groupable:
                grouped.append(f'"SELECT " s{i}_{k} comma agg{i} " FROM " {from_clause}{where} " GROUP BY " s{i}_{k}'
                               f'{having}{order}')
                if shape.order_by:  # "which label has the most albums": grouped, ordered by the aggregate
                    grouped.append(f'"SELECT " s{i}_{k} " FROM " {from_clause}{where} " GROUP BY " s{i}_{k}'
                                   f' " ORDER BY " agg{i} {direction} {limit}')
    asks_total = bool(aggs and set(shape.aggregates) & {"COUNT", "SUM", "AVG"})
    # A count, sum or average "in each ..." (with no superlative) is grouped, where a grouping exists;
    # one of everything (no "each") returns aggregates only.
    if asks_total and shape.group_by and not shape.order_by and grouped:
        forms = grouped
    else:
        forms = []
        if not (asks_total and not shape.group_by):
            order = ""
            if shape.order_by:
                # "the most expensive", "the highest score": a superlative orders by a quantity, and takes
                # the top one or as many as the question says; a question with a superlative and no sorting
                # word that returns columns (not MIN/MAX) must order. Keys are never the order.
                sortable = [p for p in visible if p not in spec.keys] if shape.sort_any else measures
                if sortable:
                    optional = "?" if shape.sort_any else ""
                    order = f' (" ORDER BY " {_one_of(_names(sortable, visible))} {direction} {limit}){optional}'
            items = [f"s{i}_{k}" for k in range(len(selectable))]
            forms.append(f'"SELECT " ("DISTINCT ")? {_distinct_pair(items)} " FROM " {from_clause}{where}{order}')
        if aggs:
            forms.append(f'"SELECT " agg{i} " FROM " {from_clause}{where}')
        forms += grouped
    rules.insert(0, f"q{i} ::= " + " | ".join(f"({f})" for f in forms))
    return rules


@lru_cache(maxsize=256)
def sql_grammar(spec: GrammarSpec) -> str:
    """The EBNF grammar (xgrammar syntax, root rule ``root``) of the SQL subset that ``spec`` allows."""
    clauses = spec.from_clauses()
    if spec.shape.grounded and spec.values:  # only FROM clauses that hold a mentioned value's table
        clauses = [c for c in clauses if {t for t, _, _ in spec.values} & set(c[0])]
    rules = [f'root ::= ({" | ".join(f"q{i}" for i in range(len(clauses)))}) ";"?',
             'comma ::= "," " "?', 'and_or ::= " AND " | " OR "']
    if spec.numbers:
        rules.append(f"number ::= {_one_of(spec.numbers)}")
    for i, (tables, clause, parent) in enumerate(clauses):
        rules += _query_rules(spec, i, tables, clause, parent)
    return "\n".join(rules)


@lru_cache(maxsize=1)
def _string_compiler():
    import xgrammar

    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), max_threads=1)


def accepts(grammar: str, text: str) -> bool:
    """Whether ``text`` is a complete sentence of the EBNF ``grammar``."""
    import xgrammar

    matcher = xgrammar.GrammarMatcher(_string_compiler().compile_grammar(grammar), terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_completed()


class GrammarLogitsProcessor:
    """A transformers-style logits processor ``(input_ids, scores) -> scores`` that holds decoding to
    the EBNF ``grammar``: xgrammar's token bitmask sets every token the grammar forbids to -inf, and
    allows the end token once the text is complete.

    The first call fixes where the prompt ends; each call feeds the tokens chosen since the last one
    to the matcher (and rolls it back when a speculative draft was rejected).
    """

    MAX_ROLLBACK = 32

    def __init__(self, tokenizer, grammar: str):
        self.tokenizer, self.grammar = tokenizer, grammar
        self.matcher = None
        self.prompt_len = 0
        self.fed = 0  # generated tokens the matcher has accepted

    def __call__(self, input_ids, scores):
        import xgrammar

        if self.matcher is None:
            compiled = grammar_compiler(self.tokenizer, scores.shape[-1]).compile_grammar(self.grammar)
            self.matcher = xgrammar.GrammarMatcher(compiled, max_rollback_tokens=self.MAX_ROLLBACK)
            self.bitmask = xgrammar.allocate_token_bitmask(1, scores.shape[-1])
            self.prompt_len = input_ids.shape[1]
        generated = input_ids[0, self.prompt_len:].tolist()
        if len(generated) < self.fed:
            self.matcher.rollback(self.fed - len(generated))
            self.fed = len(generated)
        for token in generated[self.fed:]:
            if not self.matcher.accept_token(token):
                raise ValueError(f"grammar: token {token} was not allowed")
            self.fed += 1
        self.matcher.fill_next_token_bitmask(self.bitmask)
        xgrammar.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        return scores
