"""Prompts: the single-shot baseline, few-shot candidate generation and error-driven revision.

Few-shot examples come from ``data/fewshot.json``, written over the ``company``
database, which the dev set never asks about: the examples teach the shape of a
query (count, average, group by, join), never the target database's names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tessera.workers.text2sql.schema import LinkedSchema, Schema, stem, words

DATA_DIR = Path(__file__).resolve().parent / "data"
SYSTEM = "You write one SQLite query that answers the question. Use only the tables and columns listed."
# Words that say which shape of query a question wants; matching them picks examples of that shape.
SHAPE_WORDS = {
    "how many": "count", "number of": "count", "count": "count", "average": "avg", "mean": "avg",
    "total": "sum", "sum": "sum", "highest": "max", "maximum": "max", "largest": "max", "most": "top",
    "lowest": "min", "minimum": "min", "smallest": "min", "earliest": "min", "cheapest": "min",
    "each": "group", "per": "group", "every": "group", "for each": "group", "with the name": "join",
    "together with": "join", "its": "join", "their": "join", "more than": "cmp", "less than": "cmp",
    "fewer than": "cmp", "at least": "cmp", "after": "cmp", "before": "cmp", "over": "cmp", "under": "cmp",
    "order": "order", "sorted": "order", "ordered": "order", "expensive": "top",
}


@dataclass(frozen=True)
class Example:
    question: str
    sql: str
    schema_text: str


def question_shape(question: str) -> set[str]:
    text = " " + " ".join(words(question)).lower() + " "
    return {shape for phrase, shape in SHAPE_WORDS.items() if f" {phrase} " in text}


@lru_cache(maxsize=4)
def load_examples(db_dir: str, file: str = "fewshot.json") -> tuple[Example, ...]:
    """The few-shot pool, each example with the linked schema of its own question."""
    items = json.loads((DATA_DIR / file).read_text())
    schemas: dict[str, Schema] = {}
    examples = []
    for item in items:
        schema = schemas.setdefault(item["db"], Schema.load(Path(db_dir) / item["db"]))
        linked = schema.link(item["question"])
        # The example's linked tables must cover its own SQL, or it would teach using unlisted names.
        used = set(re.findall(r"\b(\w+)\.", item["sql"])) | set(re.findall(r"\bFROM\s+(\w+)", item["sql"], re.I))
        if not used <= set(linked.tables):
            linked = LinkedSchema(schema, sorted(set(linked.tables) | used, key=list(schema.tables).index), linked.values)
        examples.append(Example(item["question"], item["sql"], linked.describe()))
    return tuple(examples)


def select_examples(question: str, examples: tuple[Example, ...], k: int) -> list[Example]:
    """The k examples most like the question: same query shape first, then shared words; most alike last."""
    shape = question_shape(question)
    stems = {stem(w) for w in words(question)}

    def score(ex: Example) -> tuple[float, int]:
        ex_shape = question_shape(ex.question)
        shared = len(shape & ex_shape) - 0.5 * len(shape ^ ex_shape)
        return (shared, len(stems & {stem(w) for w in words(ex.question)}))

    ranked = sorted(examples, key=score, reverse=True)[:k]
    return ranked[::-1]  # the closest example sits right before the question


def user_turn(schema_text: str, question: str) -> str:
    return f"Tables:\n{schema_text}\nQuestion: {question}"


def generation_messages(question: str, linked: LinkedSchema, examples: list[Example]) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}]
    for ex in examples:
        messages += [{"role": "user", "content": user_turn(ex.schema_text, ex.question)},
                     {"role": "assistant", "content": ex.sql}]
    messages.append({"role": "user", "content": user_turn(linked.describe(), question)})
    return messages


def revision_messages(question: str, linked: LinkedSchema, examples: list[Example], sql: str, error: str) -> list[dict]:
    messages = generation_messages(question, linked, examples)
    messages += [{"role": "assistant", "content": sql},
                 {"role": "user", "content": f"That query fails with the error: {error}. Write a corrected query."}]
    return messages


def single_shot_messages(question: str, schema: Schema) -> list[dict]:
    """The baseline: the whole schema as CREATE TABLE statements, no examples."""
    ddl = "\n".join(f"CREATE TABLE {t} ({', '.join(f'{c} {ty}'.strip() for c, ty in cols)});"
                    for t, cols in schema.tables.items())
    return [{"role": "user", "content": f"Database schema:\n{ddl}\n\nWrite an SQLite query that answers: {question}"}]


def extract_sql(text: str) -> str:
    """The first SELECT/WITH statement in a model's free-form answer (code fences and prose removed)."""
    fenced = re.search(r"```(?:sql)?\s*(.*?)(?:```|$)", text, re.S | re.I)
    if fenced:
        text = fenced.group(1)
    start = re.search(r"\b(SELECT|WITH)\b", text, re.I)
    if start:
        text = text[start.start():]
    return text.split(";")[0].split("\n\n")[0].strip()
