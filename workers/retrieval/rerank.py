"""A reranking implementation for transform stages: hybrid of the vector score and term overlap.

Dense scores miss exact terms (names, numbers) that a question repeats; the lexical part rewards
passages containing the question's words. ``score = weight * vector + (1 - weight) * overlap``,
where overlap is the fraction of the question's distinct content words found in the passage.
"""

from __future__ import annotations

import re
from typing import Any

from tessera.workers.runtime.context import StageContext

WORD = re.compile(r"[a-z0-9]+")
# Words too common to tell passages apart.
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i in is it of on or the this to what when where which who "
    "why with you your".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 1}


def rerank_hits(query: str, hits: list[dict[str, Any]], keep: int, vector_weight: float = 0.5) -> list[dict[str, Any]]:
    wanted = content_words(query)

    def score(hit: dict[str, Any]) -> float:
        overlap = len(wanted & content_words(hit.get("text", ""))) / len(wanted) if wanted else 0.0
        return vector_weight * float(hit.get("score", 0.0)) + (1 - vector_weight) * overlap

    ranked = sorted(hits, key=score, reverse=True)[:keep]
    return [{**hit, "rerankScore": round(score(hit), 4)} for hit in ranked]


def rerank(ctx: StageContext) -> list[dict[str, Any]]:
    """params: ``keep`` (default 3), ``vectorWeight`` (default 0.5), ``query`` (default: the request's input).
    Takes the hits of every retrieval stage it depends on."""
    hits = [hit for output in ctx.outputs.values() if isinstance(output, list)
            for hit in output if isinstance(hit, dict) and "text" in hit]
    query = str(ctx.params.get("query") or ctx.input or "")
    return rerank_hits(query, hits, int(ctx.params.get("keep", 3)), float(ctx.params.get("vectorWeight", 0.5)))
