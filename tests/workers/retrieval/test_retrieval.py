"""Retrieval: passages, a real Qdrant local store, real MiniLM embeddings, the reranker, `tessera index`."""

from __future__ import annotations

import pytest

from tessera.api.workflow import RetrievalSpec
from tessera.cli.main import main
from tessera.workers.retrieval import RetrievalError, chunk_text, default_corpus, index_files, search
from tessera.workers.retrieval.rerank import rerank
from tessera.workers.runtime.context import StageContext


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qdrant")
    count = index_files(default_corpus(), "docs", path=folder)
    return folder, count


CHUNK_CASES = [
    ("one paragraph", "A b c.", 100, ["A b c."]),
    ("paragraphs stay apart", "One.\n\nTwo.", 100, ["One.", "Two."]),
    ("short paragraphs are not merged", "One.\n\n\nTwo.", 3, ["One.", "Two."]),
    ("a long paragraph splits at sentences", "Aaa bbb. Ccc ddd. Eee.", 10, ["Aaa bbb.", "Ccc ddd.", "Eee."]),
    ("whitespace collapses", "  a\n  b  ", 100, ["a b"]),
    ("nothing", "\n\n  \n", 100, []),
]


@pytest.mark.parametrize("text,limit,expected", [c[1:] for c in CHUNK_CASES], ids=[c[0] for c in CHUNK_CASES])
def test_chunk_text(text, limit, expected):
    assert chunk_text(text, limit) == expected


def test_search_finds_the_passage_about_the_question(store):
    folder, count = store
    assert count > len(default_corpus())  # every file gave at least one passage
    hits = search(RetrievalSpec(collection="docs", path=str(folder), top_k=3), "How does the controller cap GPU power?")
    assert len(hits) == 3
    assert hits[0]["source"] == "power.txt"
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_indexing_again_replaces_instead_of_duplicating(store, tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Qdrant stores vectors.\n\nSQLite stores rows.")
    assert index_files([corpus], "twice", path=tmp_path / "q") == 2
    assert index_files([corpus], "twice", path=tmp_path / "q", recreate=False) == 2
    hits = search(RetrievalSpec(collection="twice", path=str(tmp_path / "q"), top_k=10), "vectors")
    assert len(hits) == 2  # the same ids were upserted, not added


def test_a_missing_collection_says_how_to_load_it(tmp_path):
    with pytest.raises(RetrievalError, match="'absent' does not exist .*tessera index"):
        search(RetrievalSpec(collection="absent", path=str(tmp_path)), "anything")


def test_rerank_prefers_passages_with_the_question_words():
    hits = [
        {"id": "1", "text": "Power budgets cover nodes.", "score": 0.6},
        {"id": "2", "text": "The speculative draft proposes tokens.", "score": 0.62},
        {"id": "3", "text": "Unrelated.", "score": 0.1},
    ]
    ctx = StageContext(stage="rerank", input="what do power budgets cover?", outputs={"retrieve": hits},
                       params={"keep": 2})
    ranked = rerank(ctx)
    assert [h["id"] for h in ranked] == ["1", "2"]
    assert ranked[0]["rerankScore"] > ranked[1]["rerankScore"]


def test_cli_index_names_a_missing_file(tmp_path, capsys):
    assert main(["index", "--collection", "c", "--path", str(tmp_path), str(tmp_path / "nope.txt")]) == 1
    assert "nope.txt: no such file or folder" in capsys.readouterr().err
