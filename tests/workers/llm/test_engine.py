"""The engine with the real SmolLM2 model: requests, stop sequences, streaming, constrained decoding."""

from __future__ import annotations

import pytest

from tessera.workers.llm.engine import LLMRequestError

pytestmark = pytest.mark.model


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "hi", "max_new_tokens": -3}, "max_new_tokens"),
        ({"prompt": "hi", "temperature": -0.5}, "temperature"),
        ({"prompt": "hi", "stop": "END"}, "stop"),
        ({"prompt": "hi", "stop": [""]}, "stop"),
    ],
)
def test_bad_requests_name_the_field(llm_engine, kwargs, field):
    with pytest.raises(LLMRequestError, match=rf"^{field}: "):
        llm_engine.generate(**kwargs)


def test_prompt_longer_than_the_context_is_refused(llm_engine):
    prompt = "word " * (llm_engine.context_length + 10)
    with pytest.raises(LLMRequestError, match=r"^prompt: \d+ tokens do not fit the model's context of 8192"):
        llm_engine.generate(prompt, max_new_tokens=1)


def test_chat_prompt_rejects_malformed_messages(llm_engine):
    with pytest.raises(LLMRequestError, match=r"^messages: "):
        llm_engine.chat_prompt([])
    with pytest.raises(LLMRequestError, match=r"^messages\[0\]: "):
        llm_engine.chat_prompt([{"text": "hi"}])


def test_max_new_tokens_bounds_the_answer(llm_engine, sql_and_chat_prompts):
    result = llm_engine.generate(sql_and_chat_prompts[1], max_new_tokens=7)
    assert len(result.token_ids) == 7
    assert result.finish_reason == "length"
    assert result.text == llm_engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert result.mean_logprob < 0.0


def test_stop_sequence_cuts_the_text_and_streaming_matches(llm_engine, sql_and_chat_prompts):
    prompt = sql_and_chat_prompts[1]
    full = llm_engine.generate(prompt, max_new_tokens=24)
    # A stop string taken from the middle of the plain answer: generation must end right before it.
    words = full.text.split()
    stop = " " + words[len(words) // 2]
    cut = full.text.index(stop)
    stopped = llm_engine.generate(prompt, max_new_tokens=24, stop=[stop])
    assert stopped.text == full.text[:cut]
    assert stopped.finish_reason == "stop"
    assert len(stopped.token_ids) < len(full.token_ids)
    assert "".join(llm_engine.stream(prompt, max_new_tokens=24, stop=[stop])) == stopped.text
    assert "".join(llm_engine.stream(prompt, max_new_tokens=24)) == full.text


def test_logits_processor_constrains_the_first_token(llm_engine, sql_and_chat_prompts):
    prompt = sql_and_chat_prompts[0]
    plain = llm_engine.generate(prompt, max_new_tokens=3)
    banned = plain.token_ids[0]

    def ban(input_ids, scores):
        scores[:, banned] = float("-inf")
        return scores

    constrained = llm_engine.generate(prompt, max_new_tokens=3, logits_processor=ban)
    assert banned not in constrained.token_ids
    assert constrained.token_ids[0] != plain.token_ids[0]


def test_sampling_is_reproducible_with_a_seed(llm_engine, sql_and_chat_prompts):
    prompt = sql_and_chat_prompts[1]
    first = llm_engine.generate(prompt, max_new_tokens=12, temperature=1.0, seed=7)
    again = llm_engine.generate(prompt, max_new_tokens=12, temperature=1.0, seed=7)
    assert first.token_ids == again.token_ids
