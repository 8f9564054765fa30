"""The batching engine: equal to plain greedy decoding in a concurrent batch, grammars always parse,
priority decides admission."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from tessera.workers.llm.batching import AdmissionQueue, BatchingEngine
from tessera.workers.llm.steps import LLMRequestError


class _Queued:
    def __init__(self, name: str, priority: int):
        self.name, self.priority = name, priority


@pytest.mark.parametrize(
    ("arrivals", "free", "admitted"),
    [
        ([("a", 0), ("b", 0), ("c", 0)], 2, ["a", "b"]),  # same priority: arrival order
        ([("low", 5), ("urgent", 0), ("mid", 2)], 3, ["urgent", "mid", "low"]),  # lower value first
        ([("low", 5), ("urgent", -1), ("mid", 2), ("mid2", 2)], 2, ["urgent", "mid"]),
        ([("a", 1)], 0, []),  # a full batch admits nothing
    ],
)
def test_admission_queue_orders_by_priority_then_arrival(arrivals, free, admitted):
    waiting = AdmissionQueue()
    for name, priority in arrivals:
        waiting.push(_Queued(name, priority))
    assert [r.name for r in waiting.pop(free)] == admitted
    assert len(waiting) == len(arrivals) - len(admitted)


@pytest.fixture(scope="module")
def batching(llm_engine):
    engine = BatchingEngine(llm_engine, max_batch_size=4)
    yield engine
    engine.close()


@pytest.mark.model
def test_every_request_of_a_concurrent_batch_equals_plain_greedy_decoding(llm_engine, batching,
                                                                          sql_and_chat_prompts):
    prompts = [*sql_and_chat_prompts, sql_and_chat_prompts[0] + "SELECT"]  # 3 prompt lengths, 1 shared prefix
    lengths = [12, 20, 6]  # rows leave the batch at different steps
    with batching._wake:  # the scheduler admits all three at once: one packed prefill
        requests = [batching.submit(p, max_tokens=n) for p, n in zip(prompts, lengths)]
    results = [r.result(timeout=300) for r in requests]
    for prompt, n, result in zip(prompts, lengths, results):
        plain = llm_engine.generate(prompt, max_new_tokens=n)
        assert result.token_ids == plain.token_ids
        assert result.text == plain.text
    assert [r.stats["prefill_group"] for r in results] == [3, 3, 3]
    stats = results[0].stats  # the third prompt extends the first: its prefix was computed once
    assert stats["prefill_tokens"] <= stats["prefill_prompt_tokens"] - len(llm_engine.encode(prompts[0]))
    assert max(max(r.stats["batch_sizes"]) for r in results) == 3  # they really shared steps


@pytest.mark.model
def test_a_longer_prompt_joining_a_running_batch_decodes_as_alone(llm_engine, batching, sql_and_chat_prompts):
    sql, chat = sql_and_chat_prompts

    async def stream_while_another_joins():
        stream = batching.stream(chat, max_tokens=16)
        pieces = stream.__aiter__()
        first = await pieces.__anext__()  # the chat request is decoding: the longer SQL prompt joins
        joining = batching.submit(sql, max_tokens=12)  # its batch and widens the cache to its length
        text = first + "".join([piece async for piece in pieces])
        return stream.request.result(0), text, joining.result(timeout=300)

    running, streamed, joined = asyncio.run(stream_while_another_joins())
    assert streamed == running.text
    assert running.token_ids == llm_engine.generate(chat, max_new_tokens=16).token_ids
    assert joined.token_ids == llm_engine.generate(sql, max_new_tokens=12).token_ids
    assert running.stats["batch_sizes"].get(2, 0) > 0  # the two shared decode steps


@pytest.mark.model
def test_json_schema_answers_always_parse(batching, llm_engine):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "score": {"type": "integer", "minimum": 0, "maximum": 100}},
              "required": ["name", "score"], "additionalProperties": False}
    prompt = llm_engine.chat_prompt([{"role": "user", "content": "Give a player as JSON."}])
    requests = [batching.submit(prompt, max_tokens=40, json_schema=schema, temperature=t, seed=i)
                for i, t in enumerate([0.0, 1.0, 1.0])]
    for request in requests:
        answer = json.loads(request.result(timeout=300).text)
        assert set(answer) == {"name", "score"}
        assert isinstance(answer["name"], str) and len(answer["name"]) <= 12
        assert isinstance(answer["score"], int) and 0 <= answer["score"] <= 100


@pytest.mark.model
def test_ebnf_grammar_answers_match_the_grammar(batching, sql_and_chat_prompts):
    grammar = 'root ::= "SELECT " col " FROM " table ";"\ncol ::= "name" | "age" | "COUNT(*)"\ntable ::= "singer" | "stadium"'
    result = batching.submit(sql_and_chat_prompts[0], max_tokens=30, grammar=grammar).result(timeout=300)
    assert re.fullmatch(r"SELECT (name|age|COUNT\(\*\)) FROM (singer|stadium);", result.text)
    assert result.finish_reason == "stop"


@pytest.mark.model
def test_requests_arriving_apart_at_an_idle_engine_prefill_together_within_the_window(llm_engine,
                                                                                     sql_and_chat_prompts):
    engine = BatchingEngine(llm_engine, max_batch_size=3, admission_window_s=0.5)
    try:
        requests = []
        for prompt in [*sql_and_chat_prompts, sql_and_chat_prompts[1]]:
            requests.append(engine.submit(prompt, max_tokens=2))
            time.sleep(0.02)  # a burst's requests, 20 ms apart
        assert [r.result(timeout=300).stats["prefill_group"] for r in requests] == [3, 3, 3]
    finally:
        engine.close()


@pytest.mark.model
def test_priority_decides_admission_when_the_batch_is_full(llm_engine, sql_and_chat_prompts):
    one_slot = BatchingEngine(llm_engine, max_batch_size=1)
    try:
        prompt = sql_and_chat_prompts[1]
        first = one_slot.submit(prompt, max_tokens=6)  # holds the only slot
        later = {p: one_slot.submit(prompt, max_tokens=2, priority=p) for p in (5, 0, 2)}
        for request in [first, *later.values()]:
            request.result(timeout=300)
        order = sorted(later, key=lambda p: later[p].admitted)
        assert order == [0, 2, 5]
    finally:
        one_slot.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"stop": "END"}, "stop"),
        ({"grammar": "root ::= ", "max_tokens": 4}, "grammar"),
        ({"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, "grammar"),
        ({"priority": "high"}, "priority"),
        ({"colour": "red"}, "colour"),
    ],
)
@pytest.mark.model
def test_bad_requests_name_the_field(batching, kwargs, field):
    with pytest.raises(LLMRequestError, match=rf"^{field}: "):
        batching.submit("hello", **kwargs)


def test_generated_tokens_reach_the_metrics(batching):
    from prometheus_client import REGISTRY

    def counted() -> float:
        return REGISTRY.get_sample_value("tessera_llm_generated_tokens_total", {"model": batching.engine.name}) or 0.0

    before = counted()
    result = batching.submit("Say hello.", max_tokens=5).result(timeout=120)
    assert counted() - before == len(result.token_ids) > 0


@pytest.mark.model
def test_a_greedy_request_alone_decodes_speculatively_and_losslessly(llm_engine):
    from tessera.workers.llm.specdec import SpecDecConfig

    speculative = BatchingEngine(llm_engine, max_batch_size=2, speculative=SpecDecConfig(method="ngram"))
    try:  # text that repeats itself, so that n-gram lookup drafts tokens the target accepts
        prompt = llm_engine.chat_prompt([{"role": "user", "content": "Repeat this line three times: one two three "
                                                                      "four five six seven eight"}])
        result = speculative.submit(prompt, max_tokens=24).result(timeout=300)
        assert result.token_ids == llm_engine.generate(prompt, max_new_tokens=24).token_ids
        assert result.stats["method"] == "batched+ngram"
        assert result.stats["target_steps"] < len(result.token_ids)  # some steps kept drafted tokens
    finally:
        speculative.close()
