"""Loading documents into a collection: split into passages, embed, upsert (``tessera index``)."""

from __future__ import annotations

import hashlib
import re
import uuid
from importlib import resources
from pathlib import Path
from typing import Iterable

from tessera.workers.retrieval.embedding import DIMENSION, Embedder
from tessera.workers.retrieval.store import open_client

MAX_PASSAGE_CHARS = 900
BATCH = 64
TEXT_SUFFIXES = {".txt", ".md", ".rst"}


def chunk_text(text: str, max_chars: int = MAX_PASSAGE_CHARS) -> list[str]:
    """Passages of whole paragraphs, each at most ``max_chars`` (a longer paragraph is split at sentences)."""
    passages: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        pieces = [paragraph] if len(paragraph) <= max_chars else re.split(r"(?<=[.!?])\s+", paragraph)
        current = ""
        for piece in pieces:
            if current and len(current) + 1 + len(piece) > max_chars:
                passages.append(current)
                current = ""
            current = f"{current} {piece}".strip()
        if current:
            passages.append(current)
    return passages


def default_corpus() -> list[Path]:
    """The documents the package ships (Tessera's own documentation, for the RAG example)."""
    folder = resources.files("tessera.workers.retrieval") / "corpus"
    return sorted(Path(str(item)) for item in folder.iterdir() if item.name.endswith(".txt"))


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return out


def _point_id(source: str, number: int, text: str) -> str:
    """Stable ids, so indexing the same file again replaces its passages instead of adding copies."""
    digest = hashlib.sha256(f"{source}\0{number}\0{text}".encode()).hexdigest()
    return str(uuid.UUID(digest[:32]))


def index_files(paths: Iterable[Path], collection: str, *, url: str | None = None, path: str | Path | None = None,
                recreate: bool = True, progress=None) -> int:
    """Indexes every text file under ``paths`` into ``collection``; returns the number of passages.

    ``progress``: an optional callable given the number of passages done after each batch.
    """
    from qdrant_client import models

    passages = [(str(file.name), i, text) for file in _files(paths)
                for i, text in enumerate(chunk_text(file.read_text(encoding="utf-8", errors="replace")))]
    client = open_client(url=url, path=path)
    try:
        if recreate and client.collection_exists(collection):
            client.delete_collection(collection)
        if not client.collection_exists(collection):
            client.create_collection(collection, vectors_config=models.VectorParams(size=DIMENSION,
                                                                                    distance=models.Distance.COSINE))
        embedder = Embedder.shared()
        for start in range(0, len(passages), BATCH):
            batch = passages[start:start + BATCH]
            vectors = embedder.embed([text for _, _, text in batch])
            client.upsert(collection, [
                models.PointStruct(id=_point_id(source, n, text), vector=vector, payload={"text": text, "source": source})
                for (source, n, text), vector in zip(batch, vectors)
            ])
            if progress is not None:
                progress(len(batch))
    finally:
        client.close()
    return len(passages)
