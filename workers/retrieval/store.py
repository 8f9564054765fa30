"""Searching a Qdrant collection: a server (``url``), or the embedded local mode (a folder).

Qdrant's local mode locks its folder for one client at a time, so a replica does not keep the
folder open: it copies the collection into an in-memory store when it first searches it. Any number
of replicas can then serve the same folder, and ``tessera index`` can rewrite it while they run
(replicas started later see the new contents). Local mode is for small collections; a cluster sets
``url``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tessera.api.workflow import RetrievalSpec
from tessera.workers.retrieval.embedding import Embedder

STORE_PATH_ENV = "TESSERA_QDRANT_PATH"
SCROLL_PAGE = 256


class RetrievalError(RuntimeError):
    """A search that cannot run: a missing collection, an unreachable server."""


def default_store_path() -> Path:
    """The folder of the embedded store that ``tessera index`` and retrieval stages share by default."""
    return Path(os.environ.get(STORE_PATH_ENV) or Path.home() / ".cache" / "tessera" / "qdrant")


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    score: float
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def open_client(url: str | None = None, path: str | Path | None = None, memory: bool = False):
    """A Qdrant client: the server at ``url``, an in-memory store, or the local folder ``path`` (default store)."""
    from qdrant_client import QdrantClient

    if url:
        return QdrantClient(url=url, timeout=10)
    if memory:
        return QdrantClient(location=":memory:")
    folder = Path(path or default_store_path())
    folder.mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(folder))


def copy_collection(source, target, collection: str) -> int:
    """Copies every point (vectors and payloads) of ``collection``; returns how many."""
    from qdrant_client import models

    info = source.get_collection(collection)
    if target.collection_exists(collection):
        target.delete_collection(collection)
    target.create_collection(collection, vectors_config=info.config.params.vectors)
    copied, offset = 0, None
    while True:
        points, offset = source.scroll(collection, limit=SCROLL_PAGE, offset=offset, with_vectors=True, with_payload=True)
        if points:
            target.upsert(collection, [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points])
            copied += len(points)
        if offset is None:
            return copied


class Retriever:
    """Searches the collections of one store (a server or a local folder), sharing one embedder."""

    _by_store: dict[tuple[str | None, str | None], "Retriever"] = {}
    _lock = threading.Lock()

    def __init__(self, url: str | None = None, path: str | Path | None = None):
        self.url = url
        self.path = Path(path or default_store_path()) if not url else None
        self.client = open_client(url=url) if url else open_client(memory=True)
        self.loaded: set[str] = set()
        self._load_lock = threading.Lock()

    @classmethod
    def for_spec(cls, spec: RetrievalSpec) -> "Retriever":
        key = (spec.url, None if spec.url else str(spec.path or default_store_path()))
        with cls._lock:
            if key not in cls._by_store:
                cls._by_store[key] = cls(url=spec.url, path=spec.path)
            return cls._by_store[key]

    def where(self) -> str:
        return self.url or f"the local store {self.path}"

    def _ensure(self, collection: str) -> None:
        if self.url or collection in self.loaded:
            return
        with self._load_lock:
            if collection in self.loaded:
                return
            if not (self.path and (self.path / "collection" / collection).is_dir()):
                raise RetrievalError(
                    f"collection {collection!r} does not exist in {self.where()}; load it with `tessera index`")
            local = open_client(path=self.path)
            try:
                copy_collection(local, self.client, collection)
            finally:
                local.close()
            self.loaded.add(collection)

    def search(self, collection: str, query: str, top_k: int) -> list[Hit]:
        self._ensure(collection)
        vector = Embedder.shared().embed([query])[0]
        try:
            found = self.client.query_points(collection, query=vector, limit=top_k, with_payload=True).points
        except ValueError as err:  # local mode: unknown collection
            raise RetrievalError(f"{self.where()}: {err}") from None
        except Exception as err:  # a server: unreachable, or an unknown collection
            raise RetrievalError(f"{self.where()}: {type(err).__name__}: {err}") from None
        return [Hit(id=str(p.id), text=str(p.payload.get("text", "")), score=float(p.score),
                    source=str(p.payload.get("source", ""))) for p in found]


def search(spec: RetrievalSpec, query: str) -> list[dict[str, Any]]:
    """The ``topK`` hits for ``query`` in the stage's collection, as JSON (what a retrieval stage outputs)."""
    return [hit.to_json() for hit in Retriever.for_spec(spec).search(spec.collection, query, spec.top_k)]
