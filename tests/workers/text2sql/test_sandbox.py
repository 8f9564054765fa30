"""The SQL sandbox: destructive statements never run, runaway queries stop, rows are capped."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import pytest

from tessera.workers.text2sql.sandbox import SQLError, SQLSandbox, check_statement

DESTRUCTIVE = [
    "DROP TABLE customers",
    "DELETE FROM customers",
    "UPDATE products SET price = 0",
    "INSERT INTO customers (name) VALUES ('x')",
    "REPLACE INTO customers (id, name) VALUES (1, 'x')",
    "ATTACH DATABASE '/tmp/evil.sqlite' AS evil",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 7",
    "CREATE TABLE t (x)",
    "ALTER TABLE customers ADD COLUMN y",
    "VACUUM INTO '/tmp/copy.sqlite'",
    "SELECT 1; DROP TABLE customers",
    "SELECT * FROM customers; DELETE FROM customers;",
    "WITH x AS (SELECT 1) DELETE FROM customers",
    "WITH x AS (SELECT 1) UPDATE products SET price = 0",
    "BEGIN; DELETE FROM customers; COMMIT",
    "/* comment */ DELETE FROM customers",
    "select 1 -- fine\n; drop table customers",
]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("sql", DESTRUCTIVE)
def test_destructive_sql_is_refused_and_the_file_is_unchanged(t2s_dbs, sql):
    db = t2s_dbs / "store.sqlite"
    before = digest(db)
    with pytest.raises(SQLError) as err:
        SQLSandbox(db).execute(sql)
    assert err.value.kind == "refused"
    assert digest(db) == before
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM customers").fetchone()[0] == 30


@pytest.mark.parametrize("sql", ["DELETE FROM customers", "UPDATE products SET price = 0",
                                 "INSERT INTO customers (name) VALUES ('x')", "PRAGMA query_only = OFF",
                                 "ATTACH DATABASE ':memory:' AS other", "DROP TABLE orders"])
def test_the_connection_itself_refuses_writes_when_the_parse_is_bypassed(t2s_dbs, sql):
    """Defence in depth: read-only URI, query_only and the authorizer each stop what the parse let through."""
    db = t2s_dbs / "store.sqlite"
    before = digest(db)
    conn = SQLSandbox(db).connect()
    with pytest.raises(sqlite3.Error):
        conn.execute(sql)
        conn.commit()
    conn.close()
    assert digest(db) == before


def test_reads_run_and_literals_that_look_like_keywords_are_fine(t2s_dbs):
    sandbox = SQLSandbox(t2s_dbs / "store.sqlite")
    result = sandbox.execute("SELECT COUNT(*) FROM customers WHERE name != 'DROP TABLE x; DELETE'")
    assert result.columns == ["COUNT(*)"]
    assert result.rows == [(30,)]
    assert check_statement("  WITH c AS (SELECT 1) SELECT * FROM c ;  ") == "WITH c AS (SELECT 1) SELECT * FROM c"


def test_a_runaway_query_stops_at_its_time_limit(t2s_dbs):
    sandbox = SQLSandbox(t2s_dbs / "store.sqlite", timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(SQLError) as err:
        sandbox.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT COUNT(*) FROM n")
    elapsed = time.monotonic() - started
    assert err.value.kind == "timeout"
    assert 0.25 <= elapsed < 3.0


def test_rows_are_capped(t2s_dbs):
    result = SQLSandbox(t2s_dbs / "store.sqlite", max_rows=5).execute("SELECT id FROM orders")
    assert len(result.rows) == 5 and result.truncated
    whole = SQLSandbox(t2s_dbs / "store.sqlite").execute("SELECT id FROM orders")
    assert len(whole.rows) == 80 and not whole.truncated


@pytest.mark.parametrize("sql,kind", [("SELECT nope FROM customers", "no_such_column"),
                                      ("SELECT * FROM nowhere", "no_such_table"),
                                      ("SELECT FROM WHERE", "syntax"), ("", "refused")])
def test_errors_carry_their_kind(t2s_dbs, sql, kind):
    with pytest.raises(SQLError) as err:
        SQLSandbox(t2s_dbs / "store.sqlite").execute(sql)
    assert err.value.kind == kind


def test_the_generator_is_deterministic(tmp_path, t2s_dbs):
    from tessera.workers.text2sql.data.generate import DATABASES, build

    again = build(tmp_path)
    for name in DATABASES:
        a = sqlite3.connect(again / f"{name}.sqlite").iterdump()
        b = sqlite3.connect(t2s_dbs / f"{name}.sqlite").iterdump()
        assert list(a) == list(b)


@pytest.mark.parametrize("sql", [
    "SELECT printf('%.*c', 999999999, 'x')",  # one step builds a gigabyte: the progress handler never runs
    "SELECT length(format('%.*c', 999999999, 'x'))",
    "SELECT zeroblob(999999999)",
    "SELECT length(randomblob(999999999))",
    "SELECT fts3_tokenizer('simple')",  # returns a heap pointer
    "SELECT load_extension('/tmp/evil.so')",
])
def test_functions_outside_the_allowlist_are_refused_at_once(t2s_dbs, sql):
    started = time.monotonic()
    with pytest.raises(SQLError) as err:
        SQLSandbox(t2s_dbs / "store.sqlite").execute(sql)
    assert err.value.kind == "refused" and "not authorized" in str(err.value)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("sql", [
    "SELECT length(replace(hex(substr(quote(name), 1, 1)), '2', (SELECT group_concat(name) FROM customers))) "
    "FROM customers",
    "WITH RECURSIVE s(x) AS (SELECT 'ab' UNION ALL SELECT x || x FROM s) SELECT length(x) FROM s",
])
def test_no_value_grows_past_the_length_limit(t2s_dbs, sql):
    from tessera.workers.text2sql.sandbox import MAX_VALUE_BYTES

    try:
        result = SQLSandbox(t2s_dbs / "store.sqlite", timeout_s=1.0).execute(sql)
    except SQLError as err:
        assert err.kind in ("too_large", "timeout")
        return
    assert max(row[0] for row in result.rows) <= MAX_VALUE_BYTES


def test_allowed_functions_still_run(t2s_dbs):
    result = SQLSandbox(t2s_dbs / "store.sqlite").execute(
        "SELECT COUNT(*), ROUND(AVG(price), 1), MAX(LENGTH(name)), strftime('%Y', '2024-05-01'), "
        "COALESCE(NULL, 1) FROM products WHERE name LIKE '%o%' AND category IN ('Books', 'Toys')")
    assert result.rows[0][3] == "2024" and result.rows[0][0] > 0


def test_a_memory_error_is_a_failed_candidate(t2s_dbs, monkeypatch):
    def exhausted(self):
        raise MemoryError

    monkeypatch.setattr(SQLSandbox, "connect", exhausted)
    with pytest.raises(SQLError) as err:
        SQLSandbox(t2s_dbs / "store.sqlite").execute("SELECT 1")
    assert err.value.kind == "too_large"


def test_a_locked_database_fails_fast_as_unavailable(t2s_dbs, tmp_path):
    from tessera.workers.text2sql.schema import Schema

    db = tmp_path / "locked.sqlite"
    db.write_bytes((t2s_dbs / "store.sqlite").read_bytes())
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(SQLError) as err:
            SQLSandbox(db).execute("SELECT COUNT(*) FROM customers")
        assert err.value.kind == "unavailable"
        with pytest.raises(SQLError) as err:
            Schema.load(db)
        assert err.value.kind == "unavailable" and "locked.sqlite" in str(err.value)
        assert time.monotonic() - started < 1.5  # not sqlite3's 5 s busy wait, twice
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_corrupt_file_gets_a_clear_error_from_schema_linking_and_execution(tmp_path):
    from tessera.workers.text2sql.stages import SchemaLinker

    db = tmp_path / "corrupt.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SQLError) as err:
        SchemaLinker().link("How many customers are there?", str(db))
    assert err.value.kind == "corrupt"
    assert str(err.value).startswith("database corrupt.sqlite: is not a readable SQLite database")
    with pytest.raises(SQLError) as err:
        SQLSandbox(db).execute("SELECT 1 FROM customers")
    assert err.value.kind == "corrupt"
