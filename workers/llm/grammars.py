"""xgrammar's grammar compiler for a Hugging Face tokenizer, built once per (tokenizer, vocabulary, stops).

Building the tokenizer info walks the whole vocabulary, so every constrained decoder of a model
(the batching engine, the Text-to-SQL logits processor) shares one compiler, which also caches
compiled grammars.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=8)
def grammar_compiler(tokenizer, vocab_size: int, stop_token_ids: tuple[int, ...] | None = None):
    """``stop_token_ids``: the tokens that end a complete answer (None: the tokenizer's own end token)."""
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids) if stop_token_ids else None)
    return xgrammar.GrammarCompiler(info, max_threads=1)
