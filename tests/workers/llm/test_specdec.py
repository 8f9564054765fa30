"""Speculative decoding: token-for-token equality with plain greedy decoding, and its accounting."""

from __future__ import annotations

import pytest

from tessera.workers.llm.engine import LLMRequestError
from tessera.workers.llm.specdec import DraftLengthController, SpecDecConfig, expected_tokens_per_step

MAX_NEW = 24


@pytest.mark.model
@pytest.mark.parametrize("method", ["ngram", "layer_skip", "quantized", "draft_head", "draft_head_ngram"])
def test_every_draft_method_reproduces_plain_greedy_decoding(llm_engine, sql_and_chat_prompts, method):
    # Fixed draft length and no confidence cut-off: every step drafts, so rejections and cache
    # roll-backs happen often and any slip would change the output.
    config = SpecDecConfig(method=method, adaptive=False, max_draft_tokens=3, confidence_threshold=0.0)
    drafted = 0
    for prompt in sql_and_chat_prompts:
        plain = llm_engine.generate(prompt, max_new_tokens=MAX_NEW)
        spec = llm_engine.generate(prompt, max_new_tokens=MAX_NEW, speculative=config)
        assert spec.token_ids == plain.token_ids
        assert spec.text == plain.text
        assert spec.finish_reason == plain.finish_reason
        assert spec.mean_logprob == pytest.approx(plain.mean_logprob, abs=1e-3)
        drafted += spec.stats["drafted_tokens"]
    assert drafted > 0


@pytest.mark.model
def test_separate_draft_model_reproduces_plain_greedy_decoding(llm_engine, sql_and_chat_prompts, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(
        vocab_size=llm_engine.model.config.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
    ))
    tiny.save_pretrained(tmp_path)
    llm_engine.tokenizer.save_pretrained(tmp_path)
    config = SpecDecConfig(method="draft_model", draft_model_path=str(tmp_path), adaptive=False,
                           max_draft_tokens=2, confidence_threshold=0.0)
    prompt = sql_and_chat_prompts[0]
    plain = llm_engine.generate(prompt, max_new_tokens=16)
    spec = llm_engine.generate(prompt, max_new_tokens=16, speculative=config)
    assert spec.token_ids == plain.token_ids
    assert spec.stats["drafted_tokens"] > 0


@pytest.mark.model
def test_speculative_decoding_honours_a_logits_processor(llm_engine, sql_and_chat_prompts):
    prompt = sql_and_chat_prompts[0]
    banned = llm_engine.generate(prompt, max_new_tokens=4).token_ids[1]

    def ban(input_ids, scores):
        scores[:, banned] = float("-inf")
        return scores

    config = SpecDecConfig(method="ngram", adaptive=False, max_draft_tokens=3, ngram_min=1)
    plain = llm_engine.generate(prompt, max_new_tokens=MAX_NEW, logits_processor=ban)
    spec = llm_engine.generate(prompt, max_new_tokens=MAX_NEW, logits_processor=ban, speculative=config)
    assert banned not in plain.token_ids
    assert spec.token_ids == plain.token_ids


class ScriptedDrafter:
    """Drafts the known plain answer, or that answer with every token made wrong."""

    def __init__(self, answer: list[int], wrong: bool):
        self.answer, self.wrong = answer, wrong

    def start(self, prompt_ids):
        self.prompt_len = len(prompt_ids)
        return self

    def propose(self, ids, feature, k, threshold):
        done = len(ids) - self.prompt_len
        return [t + 1 if self.wrong else t for t in self.answer[done : done + k]]

    def close(self):
        pass


@pytest.fixture
def scripted(llm_engine):
    configs = []

    def install(answer, wrong, draft_len):
        # A config of its own (ngram sizes no real request uses), so the script never serves others.
        config = SpecDecConfig(method="ngram", ngram_max=16 - wrong, ngram_min=16 - wrong, adaptive=False,
                               max_draft_tokens=draft_len)
        llm_engine.set_drafter(config, ScriptedDrafter(answer, wrong))
        configs.append(config)
        return config

    yield install
    for config in configs:
        llm_engine._drafters.pop(config.key(), None)


@pytest.mark.model
def test_acceptance_accounting_when_every_draft_is_right(llm_engine, sql_and_chat_prompts, scripted):
    prompt = sql_and_chat_prompts[1]
    plain = llm_engine.generate(prompt, max_new_tokens=21)
    assert len(plain.token_ids) == 21
    result = llm_engine.generate(prompt, max_new_tokens=21, speculative=scripted(plain.token_ids, False, 4))
    # Prefill gives 1 token; each of 4 verifications keeps 4 drafted tokens plus the target's own.
    stats = result.stats
    assert result.token_ids == plain.token_ids
    assert (stats["target_steps"], stats["drafted_tokens"], stats["accepted_tokens"]) == (5, 16, 16)
    assert stats["acceptance_rate"] == 1.0
    assert stats["mean_tokens_per_step"] == pytest.approx(21 / 5)


@pytest.mark.model
def test_acceptance_accounting_when_every_draft_is_wrong(llm_engine, sql_and_chat_prompts, scripted):
    prompt = sql_and_chat_prompts[1]
    plain = llm_engine.generate(prompt, max_new_tokens=6)
    result = llm_engine.generate(prompt, max_new_tokens=6, speculative=scripted(plain.token_ids, True, 3))
    # One token per target step; drafts shrink to the room left: 3 + 3 + 2 + 1 + 0.
    stats = result.stats
    assert result.token_ids == plain.token_ids
    assert (stats["target_steps"], stats["drafted_tokens"], stats["accepted_tokens"]) == (6, 9, 0)
    assert stats["acceptance_rate"] == 0.0
    assert stats["draft_lengths"] == {3: 2, 2: 1, 1: 1, 0: 1}


@pytest.mark.model
def test_draft_model_without_a_path_is_a_request_error(llm_engine, sql_and_chat_prompts):
    with pytest.raises(LLMRequestError, match=r"^speculative\.draft_model_path: required"):
        llm_engine.generate(sql_and_chat_prompts[0], max_new_tokens=4, speculative=SpecDecConfig(method="draft_model"))


def test_config_rejects_unknown_methods_and_lengths():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="method"):
        SpecDecConfig(method="magic")
    with pytest.raises(ValidationError, match="max_draft_tokens"):
        SpecDecConfig(max_draft_tokens=0)


def test_expected_tokens_per_step_matches_the_closed_form():
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_draft_length_grows_with_acceptance_and_stops_when_drafting_does_not_pay():
    controller = DraftLengthController(SpecDecConfig(max_draft_tokens=8))
    for _ in range(30):
        n = controller.next_length()
        controller.update(n, n, draft_seconds=0.0001 * n, verify_seconds=0.034 * (1 + 0.1 * n))
    assert controller.next_length() >= 5

    controller = DraftLengthController(SpecDecConfig(max_draft_tokens=8))
    lengths = []
    for _ in range(40):
        n = controller.next_length()
        lengths.append(n)
        controller.update(n, 0, draft_seconds=0.0001 * n, verify_seconds=0.034 * (1 + 0.1 * n))
    assert lengths[-16:].count(0) >= 12  # mostly no drafting, with an occasional one-token probe
    assert 1 in lengths[-16:]


def test_ngram_lookup_proposes_what_followed_the_latest_match():
    from tessera.workers.llm.drafters import NgramDrafter

    session = NgramDrafter(n_max=3, n_min=2).start([])
    ids = [5, 6, 7, 8, 9, 1, 2, 6, 7, 3, 4, 6, 7]
    assert session.propose(ids, None, 2, 0.0) == [3, 4]  # latest "6 7" is followed by 3 4
    assert session.propose(ids + [3], None, 5, 0.0) == [4, 6, 7, 3]  # "6 7 3" matched, up to the end
    assert session.propose([1, 2, 3], None, 3, 0.0) == []


def test_draft_head_training_prompts_are_deterministic_and_leave_the_benchmark_out():
    from tessera.workers.llm.draft_head import DraftHeadTraining, training_prompts
    from tessera.workers.llm.prompts import benchmark_prompts

    training = DraftHeadTraining(composed_schemas=20, composed_chat=50)
    prompts = training_prompts(training)
    assert prompts == training_prompts(training)
    texts = {m[-1]["content"] for m in prompts}
    held_out = benchmark_prompts()
    assert not texts & {p["messages"][-1]["content"] for p in held_out}
    # No table of the benchmark's schemas, with its columns, is in a training schema.
    benchmark_tables = {line for p in held_out if p["kind"] == "sql"
                        for line in p["messages"][-1]["content"].splitlines()[1:-1]}
    training_tables = {line.lower() for text in texts if text.startswith("Tables:")
                       for line in text.splitlines()[1:-1]}
    assert benchmark_tables and training_tables and not benchmark_tables & training_tables


@pytest.mark.model
def test_draft_head_stops_where_its_path_probability_falls_below_the_threshold(llm_engine, sql_and_chat_prompts):
    from tessera.workers.llm.draft_head import load_draft_head

    ids = llm_engine.encode(sql_and_chat_prompts[0])
    _logits, hidden = llm_engine.forward(ids, llm_engine.new_cache())
    session = load_draft_head(llm_engine).start(ids)
    drafts = {t: session.propose(ids, hidden[-1], 8, t) for t in (0.0, 0.05, 0.3, 0.9)}
    assert len(drafts[0.0]) == 8
    # The same greedy path each time, cut earlier as the threshold rises.
    for low, high in ((0.0, 0.05), (0.05, 0.3), (0.3, 0.9)):
        assert drafts[high] == drafts[low][: len(drafts[high])]
        assert len(drafts[high]) <= len(drafts[low])
    assert len(drafts[0.9]) < 8
