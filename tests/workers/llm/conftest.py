"""Prompts shared by the LLM tests (the model itself is the session fixture ``llm_engine``)."""

from __future__ import annotations

import pytest

from tessera.workers.llm.prompts import benchmark_prompts


@pytest.fixture(scope="session")
def sql_and_chat_prompts(llm_engine) -> list[str]:
    """One held-out Text-to-SQL prompt and one chat prompt, chat template applied."""
    prompts = benchmark_prompts()
    chosen = [next(p for p in prompts if p["kind"] == "sql"), next(p for p in prompts if p["kind"] == "chat")]
    return [llm_engine.chat_prompt(p["messages"]) for p in chosen]
