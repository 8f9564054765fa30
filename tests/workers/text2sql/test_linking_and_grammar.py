"""Schema linking, the few-shot pool, and the SQL grammar the decoder is held to."""

from __future__ import annotations

import json
import re

import pytest

from tessera.workers.text2sql.grammar import QueryShape, accepts, sql_grammar
from tessera.workers.text2sql.prompts import DATA_DIR, extract_sql, load_examples, select_examples
from tessera.workers.text2sql.sandbox import SQLSandbox
from tessera.workers.text2sql.schema import Schema

DEV = json.loads((DATA_DIR / "dev.json").read_text())
FEWSHOT = json.loads((DATA_DIR / "fewshot.json").read_text())
VALIDATION = json.loads((DATA_DIR / "validation.json").read_text())


def test_the_dev_set_is_large_enough_and_every_gold_query_returns_rows(t2s_dbs):
    assert len(DEV) >= 40
    assert {item["db"] for item in DEV} == {"store.sqlite", "school.sqlite", "library.sqlite"}
    for item in DEV + FEWSHOT:
        result = SQLSandbox(t2s_dbs / item["db"]).execute(item["sql"])
        assert result.rows and result.rows != [(0,)], item["question"]


def test_few_shot_examples_never_come_from_a_dev_database():
    assert {item["db"] for item in FEWSHOT}.isdisjoint({item["db"] for item in DEV})


def test_the_validation_set_asks_about_databases_nothing_else_uses(t2s_dbs):
    assert len(VALIDATION) >= 30
    assert {item["db"] for item in VALIDATION}.isdisjoint({item["db"] for item in DEV + FEWSHOT})
    for item in VALIDATION:
        result = SQLSandbox(t2s_dbs / item["db"]).execute(item["sql"])
        assert result.rows and result.rows != [(0,)], item["question"]


@pytest.mark.parametrize("item", DEV + FEWSHOT + VALIDATION, ids=lambda i: i["question"][:40])
def test_linking_keeps_every_table_of_the_gold_query_and_the_grammar_accepts_it(t2s_dbs, item):
    """Linking recall and grammar coverage: the gold query must stay writable under the constraint."""
    linked = Schema.load(t2s_dbs / item["db"]).link(item["question"])
    used = set(re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", item["sql"], re.I))
    assert used <= set(linked.tables)
    assert accepts(sql_grammar(linked.grammar_spec(item["question"])), item["sql"])
    assert accepts(sql_grammar(linked.grammar_spec(item["question"], shaped=False)), item["sql"])


def test_value_linking_finds_stored_values_in_the_database_spelling(t2s_dbs):
    schema = Schema.load(t2s_dbs / "store.sqlite")
    matches = schema.value_matches("how many orders were CANCELLED by customers in paris?")
    assert {(m.table, m.column, m.value) for m in matches} == {("orders", "status", "cancelled"),
                                                               ("customers", "city", "Paris")}


def test_the_grammar_refuses_unknown_names_and_ungrounded_literals(t2s_dbs):
    question = "Which products cost more than 500?"
    linked = Schema.load(t2s_dbs / "store.sqlite").link(question)
    for grammar in (sql_grammar(linked.grammar_spec(question)), sql_grammar(linked.grammar_spec(question, shaped=False))):
        assert accepts(grammar, "SELECT name FROM products WHERE price > 500")
        assert not accepts(grammar, "SELECT name FROM products WHERE price > 5")  # not complete
        assert not accepts(grammar, "SELECT product_name FROM products")  # no such column
        assert not accepts(grammar, "SELECT name FROM products WHERE price > 100")  # 100 is not in the question
        assert not accepts(grammar, "SELECT name FROM products WHERE name > 500")  # text column, number literal
        assert not accepts(grammar, "SELECT name FROM products; DROP TABLE products")
        assert not accepts(grammar, "SELECT name FROM products JOIN orders ON 1 = 1")  # not a foreign-key join


def test_the_shaped_grammar_allows_only_the_clauses_the_question_cues_and_the_open_one_all(t2s_dbs):
    question = "Which products cost more than 500?"
    linked = Schema.load(t2s_dbs / "store.sqlite").link(question)
    counted = "SELECT COUNT(*) FROM products WHERE price > 500"
    assert not accepts(sql_grammar(linked.grammar_spec(question)), counted)
    assert accepts(sql_grammar(linked.grammar_spec(question, shaped=False)), counted)
    assert linked.grammar_spec(question, shaped=False).shape == QueryShape.open()
    reversed_ = "SELECT name FROM products WHERE price < 500"
    assert not accepts(sql_grammar(linked.grammar_spec(question)), reversed_)
    assert accepts(sql_grammar(linked.grammar_spec(question, shaped=False)), reversed_)


def test_examples_are_picked_by_the_shape_of_the_question(t2s_dbs):
    examples = load_examples(str(t2s_dbs))
    picked = select_examples("How many books are there in each genre?", examples, 3)
    assert "GROUP BY" in picked[-1].sql and "COUNT" in picked[-1].sql
    picked = select_examples("What is the average number of pages of books?", examples, 3)
    assert "AVG" in picked[-1].sql


def test_extract_sql_from_free_text():
    assert extract_sql("Sure! ```sql\nSELECT a FROM t;\n``` done") == "SELECT a FROM t"
    assert extract_sql("The query is SELECT 1; and more") == "SELECT 1"


def test_selection_votes_by_execution_result_and_breaks_ties_by_likelihood():
    from tessera.workers.text2sql.sandbox import ExecutionResult, result_key
    from tessera.workers.text2sql.stages import Candidate, Selector

    def ran(sql, rows, logprob):
        return Candidate(sql, logprob, "sample", ExecutionResult(["x"], rows, False, 0.0, result_key(rows)))

    a1, a2 = ran("SELECT a FROM t", [(1,), (2,)], -0.9), ran("SELECT a FROM t ORDER BY a", [(2,), (1,)], -0.5)
    b = ran("SELECT b FROM t", [(3,)], -0.1)
    failed = Candidate("SELECT nope FROM t", 0.0, "greedy", None, "no such column: nope", "no_such_column")
    chosen = Selector().select([b, a1, failed, a2])
    assert chosen.chosen is a2 and chosen.votes == 2  # two agree on {1, 2}; the likelier of them wins
    assert Selector().select([b, ran("SELECT c FROM t", [(4,)], -0.2)]).chosen is b  # a tie: likelihood
    empty = [ran("SELECT a FROM t WHERE 0", [], -0.3), ran("SELECT a FROM t WHERE 1 = 0", [], -0.4)]
    assert Selector().select(empty + [b]).chosen is b  # two empty answers count one vote: a tie, and b is likelier
    assert Selector().select([failed]).votes == 0


def test_a_malformed_query_counts_less():
    from tessera.workers.text2sql.sandbox import ExecutionResult, result_key
    from tessera.workers.text2sql.stages import Candidate, Selector, malformed

    assert malformed("SELECT SUM(stock) FROM products GROUP BY category")
    assert malformed("SELECT name, price, name FROM products")
    assert not malformed("SELECT category, SUM(stock) FROM products GROUP BY products.category")
    rows1, rows2 = [(1,)], [(2,)]
    bad = Candidate("SELECT SUM(s) FROM p GROUP BY c", -0.1, "greedy", ExecutionResult(["x"], rows1, False, 0, result_key(rows1)))
    good = Candidate("SELECT c, SUM(s) FROM p GROUP BY c", -0.9, "sample", ExecutionResult(["x"], rows2, False, 0, result_key(rows2)))
    assert Selector().select([bad, good]).chosen is good


@pytest.mark.parametrize("sql, answer", [
    ("SELECT doctor.full_name, doctor.years_experience FROM doctor WHERE doctor.years_experience > 30",
     "SELECT doctor.full_name FROM doctor WHERE doctor.years_experience > 30"),
    ("SELECT DISTINCT full_name, years_experience FROM doctor ORDER BY years_experience DESC LIMIT 1",
     "SELECT DISTINCT full_name FROM doctor ORDER BY years_experience DESC LIMIT 1"),
    ("SELECT name, price FROM products WHERE category = 'Toys'", None),  # price is not compared
    ("SELECT name, price FROM products ORDER BY price", None),  # a sort, not the top rows
    ("SELECT price FROM products WHERE price > 500", None),  # the only column stays
    ("SELECT category, COUNT(*) FROM products WHERE category != 'x' GROUP BY category", None),
])
def test_a_column_that_only_repeats_what_the_query_compared_is_dropped(sql, answer):
    from tessera.workers.text2sql.stages import without_compared_columns

    assert without_compared_columns(sql) == (answer or sql)


@pytest.mark.parametrize("question, refused, allowed", [
    ("Count the doctors in each specialty.", "SELECT doctor_id, COUNT(*) FROM doctor GROUP BY doctor_id",
     "SELECT specialty, COUNT(*) FROM doctor GROUP BY specialty"),
    ("How many aircraft were built before 2005?", "SELECT COUNT(*) FROM aircraft WHERE aircraft_id < 2005",
     "SELECT COUNT(*) FROM aircraft WHERE built_year < 2005"),
    ("Which artists come from Spain?", "SELECT artist_name, artist_name FROM artist",
     "SELECT artist_name FROM artist WHERE origin_country = 'Spain'"),
    ("What is the earliest year an artist was formed?", "SELECT formed_year FROM artist ORDER BY id LIMIT 1",
     "SELECT MIN(formed_year) FROM artist"),
    # An aggregate beside a column groups by exactly that column, and never by one whose values are all distinct.
    ("How many albums does each label have?", "SELECT album_title, COUNT(*) FROM album GROUP BY album_title",
     "SELECT label, COUNT(*) FROM album GROUP BY label"),
    ("How many albums does each label have?", "SELECT label, COUNT(*) FROM album", "SELECT label, COUNT(*) FROM album GROUP BY label"),
    ("How many visits did each doctor have? Give the doctor's full name and the number of visits.",
     "SELECT doctor.full_name, COUNT(*) FROM visit JOIN doctor ON visit.doctor_id = doctor.doctor_id",
     "SELECT doctor.full_name, COUNT(*) FROM visit JOIN doctor ON visit.doctor_id = doctor.doctor_id "
     "GROUP BY doctor.full_name"),
])
def test_keys_repetition_and_ungrouped_aggregates_are_outside_the_grammar(t2s_dbs, question, refused, allowed):
    """A key named only by its table ("each doctor" -> doctor_id) is not an answer or an order; no column
    comes twice; an aggregate beside a column groups by that column."""
    db = {"doctor": "clinic", "aircraft": "airline", "artist": "music", "album": "music",
          "visit": "clinic"}[refused.split(" FROM ")[1].split()[0]]
    linked = Schema.load(t2s_dbs / f"{db}.sqlite").link(question)
    for shaped in (True, False):
        grammar = sql_grammar(linked.grammar_spec(question, shaped=shaped))
        assert accepts(grammar, allowed) and not accepts(grammar, refused)


def test_the_shaped_grammar_compares_a_mentioned_stored_value_and_its_words_are_no_literals(t2s_dbs):
    question = "List the order dates of orders placed by Bruno Novak."
    linked = Schema.load(t2s_dbs / "store.sqlite").link(question)
    shaped, open_ = sql_grammar(linked.grammar_spec(question)), sql_grammar(linked.grammar_spec(question, shaped=False))
    joined = ("SELECT orders.order_date FROM orders JOIN customers ON orders.customer_id = customers.id "
              "WHERE customers.name = 'Bruno Novak'")
    assert accepts(shaped, joined) and accepts(open_, joined)
    assert not accepts(shaped, "SELECT order_date FROM orders") and accepts(open_, "SELECT order_date FROM orders")
    for grammar in (shaped, open_):
        assert not accepts(grammar, "SELECT order_date FROM orders WHERE order_date = 'Bruno'")


def test_the_shaped_grammar_groups_a_count_in_each_and_the_open_one_need_not(t2s_dbs):
    question = "How many teachers work in each department?"
    linked = Schema.load(t2s_dbs / "school.sqlite").link(question)
    shaped, open_ = sql_grammar(linked.grammar_spec(question)), sql_grammar(linked.grammar_spec(question, shaped=False))
    for ungrouped in ("SELECT name, department FROM teachers", "SELECT COUNT(*) FROM teachers"):
        assert not accepts(shaped, ungrouped) and accepts(open_, ungrouped)
    assert accepts(shaped, "SELECT department, COUNT(*) FROM teachers GROUP BY department")
