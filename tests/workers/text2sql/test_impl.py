"""The Text-to-SQL stages as workflow implementations, driven by a StageContext as the runtime builds
it, with a scripted model client (no Ray, no model): the grammar each call sends must accept what the
script answers, and the real sandbox runs the SQL."""

from __future__ import annotations

import asyncio
import json

import pytest

from tessera.workers.runtime.context import Completion, StageContext
from tessera.workers.text2sql import impl
from tessera.workers.text2sql.grammar import accepts

QUESTION = "List the names of all customers who live in Paris."
GOLD = "SELECT name FROM customers WHERE city = 'Paris'"


class ScriptedLLM:
    """Answers from a script in call order and records every call's options."""

    def __init__(self, answers: list[str]):
        self.answers = list(answers)
        self.calls: list[dict] = []

    async def generate(self, prompt, options=None, *, system=None, history=(), **overrides):
        self.calls.append({"prompt": prompt, "system": system, "history": list(history), **overrides})
        text = self.answers.pop(0)
        assert accepts(overrides["grammar"], text), text  # the model could have written it
        return Completion(text, mean_logprob=-0.1 * len(self.calls))


def ctx(stage, db, outputs=None, llm=None, **fields):
    params = {"database": str(db), **fields.pop("params", {})}
    return StageContext(stage=stage, input={"question": QUESTION}, outputs=outputs or {}, params=params, llm=llm,
                        **fields)


def run(fn, context):
    return asyncio.run(fn(context)) if asyncio.iscoroutinefunction(fn) else fn(context)


@pytest.fixture
def store(t2s_dbs):
    return t2s_dbs / "store.sqlite"


def test_the_five_stages_answer_a_question_end_to_end(store, t2s_dbs):
    linked = run(impl.link_schema, ctx("link", store))
    assert linked["kind"] == "linked" and "customers" in linked["tables"]
    assert ["customers", "city", "Paris"] in linked["values"]
    json.dumps(linked)

    wrong = "SELECT name FROM customers"  # forgets the filter (only the open grammar lets it)
    llm = ScriptedLLM([GOLD, wrong, GOLD, GOLD])
    fanned = [run(impl.generate_candidates, ctx("gen", store, {"link": linked}, llm, fan_index=i,
                                                params={"fewshotDbDir": str(t2s_dbs)})) for i in range(4)]
    assert [c["origin"] for out in fanned for c in out["candidates"]] == ["greedy", "greedy-open", "sample", "sample-open"]
    assert [call["temperature"] for call in llm.calls] == [0.0, 0.0, 0.7, 0.7]
    assert llm.calls[0]["grammar"] != llm.calls[1]["grammar"]  # the question-shaped and the open grammar
    assert llm.calls[0]["prompt"].endswith("Question: " + QUESTION)
    # The few-shot examples go as earlier chat turns, as the in-process SQLWriter sends them.
    assert [t["role"] for t in llm.calls[0]["history"]] == ["user", "assistant"] * 3
    assert all(t["content"].startswith("SELECT") for t in llm.calls[0]["history"][1::2])
    assert [c["meanLogprob"] for out in fanned for c in out["candidates"]] == pytest.approx([-0.1, -0.2, -0.3, -0.4])

    one_call = ScriptedLLM([GOLD, wrong, GOLD, GOLD])
    whole = run(impl.generate_candidates, ctx("gen", store, {"link": linked}, one_call,
                                               params={"fewshotDbDir": str(t2s_dbs), "candidates": 4}))
    assert whole["candidates"] == [c for out in fanned for c in out["candidates"]]

    executed = run(impl.execute_candidates, ctx("exec", store, {"gen": fanned}))
    assert [c["ok"] for c in executed["candidates"]] == [True, True, True, True]
    assert len(executed["candidates"][1]["rows"]) == 30

    revised = run(impl.revise, ctx("revise", store, {"exec": executed}, ScriptedLLM([])))
    assert revised["candidates"] == executed["candidates"]  # one runs: nothing to repair, no model call

    assert [c["meanLogprob"] for c in executed["candidates"]] == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    answer = run(impl.select_answer, ctx("select", store, {"revise": revised, "exec": executed}))
    assert answer["sql"] == GOLD and answer["votes"] == 3 and answer["candidates"] == 2
    assert sorted(answer["rows"]) == [[n] for n in sorted(
        r[0] for r in __import__("sqlite3").connect(store).execute(GOLD))]
    json.dumps(answer)


def test_revise_repairs_the_failing_candidate_once_per_iteration_then_selection_takes_the_repair(store, t2s_dbs):
    linked = run(impl.link_schema, ctx("link", store))
    failing = {"kind": "candidates", "candidates": [{"sql": "SELECT nme FROM customers", "origin": "greedy"}]}
    executed = run(impl.execute_candidates, ctx("exec", store, {"gen": failing}))
    assert executed["candidates"][0]["errorKind"] == "no_such_column"
    llm = ScriptedLLM([GOLD])
    deps = {"link": linked, "exec": executed}
    first = run(impl.revise, ctx("revise", store, deps, llm, params={"fewshotDbDir": str(t2s_dbs)}))
    assert "no such column: nme" in llm.calls[0]["prompt"] and llm.calls[0]["temperature"] == 0.0
    assert [c["origin"] for c in first["candidates"]] == ["greedy", "revision"] and first["candidates"][1]["ok"]
    second = run(impl.revise, ctx("revise", store, deps, llm, iteration=1, previous=first))
    assert second["candidates"] == first["candidates"]  # a candidate runs now: the loop stops
    assert run(impl.select_answer, ctx("select", store, {"revise": second}))["sql"] == GOLD


def test_revise_skips_the_model_once_the_deadline_has_passed(store):
    failing = {"kind": "candidates", "candidates": [{"sql": "SELECT nme FROM customers", "origin": "greedy"}]}
    executed = run(impl.execute_candidates, ctx("exec", store, {"gen": failing}))
    out = run(impl.revise, ctx("revise", store, {"exec": executed}, ScriptedLLM([]), deadline_s=0.0))
    assert out["candidates"] == executed["candidates"]
    answer = run(impl.select_answer, ctx("select", store, {"revise": out}))
    assert answer["error"] == "no such column: nme" and answer["rows"] == []


@pytest.mark.parametrize("fn, fields, message", [
    (impl.link_schema, {"params": {"database": ""}}, "params.database: required"),
    (impl.link_schema, {"params": {"database": "/nonexistent.sqlite"}}, "is not a file"),
    (impl.link_schema, {"input": {"question": " "}}, "input: the question must be a non-empty string"),
    (impl.generate_candidates, {"outputs": {"x": {"kind": "linked", "question": QUESTION, "tables": ["customers"],
                                                  "values": []}}}, "needs a model"),
    (impl.generate_candidates, {}, "output is of kind linked"),
    (impl.execute_candidates, {}, "output is of kind candidates"),
    (impl.select_answer, {}, "output is of kind executed"),
])
def test_misuse_gets_an_error_naming_the_stage_and_the_field(store, fn, fields, message):
    context = ctx("my-stage", store)
    for key, value in fields.items():
        setattr(context, key, {**context.params, **value} if key == "params" else value)
    with pytest.raises(ValueError) as err:
        run(fn, context)
    assert "stage my-stage" in str(err.value) and message in str(err.value)


def test_a_corrupt_database_gets_a_clear_error(tmp_path):
    from tessera.workers.text2sql.sandbox import SQLError

    db = tmp_path / "broken.sqlite"
    db.write_bytes(b"not sqlite" * 50)
    with pytest.raises(SQLError) as err:
        impl.link_schema(ctx("link", db))
    assert "broken.sqlite: is not a readable SQLite database" in str(err.value)
