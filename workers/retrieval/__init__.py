"""Retrieval stages: vector search in Qdrant with embeddings from a model shipped in a wheel.

``qdrant-client``'s embedded local mode (a folder, default ``~/.cache/tessera/qdrant``) is the
default; a stage's ``retrieval.url`` points the same code at a Qdrant server. ``tessera index``
loads documents into a collection (:func:`index_files`).
"""

from tessera.workers.retrieval.embedding import Embedder
from tessera.workers.retrieval.index import chunk_text, default_corpus, index_files
from tessera.workers.retrieval.store import Hit, RetrievalError, Retriever, default_store_path, search

__all__ = [
    "Embedder", "Hit", "RetrievalError", "Retriever", "chunk_text", "default_corpus", "default_store_path",
    "index_files", "search",
]
