"""Runs one model-written SQL query against a real SQLite file without ever changing it.

Layers of defence, each enough on its own for the common cases:

1. ``check_statement`` refuses, before SQLite sees the text, anything but a single
   ``SELECT`` or ``WITH`` statement and any statement that names a write or admin
   keyword outside string literals.
2. The file is opened through a ``file:...?mode=ro`` URI, with ``PRAGMA query_only=ON``.
3. An authorizer denies every action except reading, selecting, recursive CTEs and
   calling a function of ``ALLOWED_FUNCTIONS`` (so ``PRAGMA``, ``ATTACH``, writes and
   functions such as ``printf``, ``zeroblob`` or ``fts3_tokenizer`` fail at prepare time).
4. SQLite's own limits cap the size of any string or blob (``MAX_VALUE_BYTES``) and of
   the statement, so one function call cannot build gigabytes inside a single step,
   where the progress handler cannot stop it.
5. A progress handler stops a runaway query at its time limit; rows come back one at a
   time until the row cap or the result-size cap (``MAX_RESULT_BYTES``).

Every failure, whether SQLite's error, memory running out or a locked or corrupt file,
becomes one ``SQLError`` with a kind: a failed candidate, never an exception out of a stage.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

# SQL keywords that only statements other than a read use; a read never needs them outside a literal.
FORBIDDEN_KEYWORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "DROP", "CREATE", "ALTER", "ATTACH", "DETACH", "PRAGMA", "VACUUM",
    "REINDEX", "ANALYZE", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "TRIGGER", "UPSERT",
})
ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, getattr(sqlite3, "SQLITE_RECURSIVE", 33)})
# The functions a read query may call: SQLite's core scalar, date, math, aggregate and window functions
# whose output is bounded by their input. Left out: printf/format (width fields), zeroblob, randomblob,
# random, fts3_tokenizer (returns a heap pointer), load_extension, json and sqlite_* introspection.
ALLOWED_FUNCTIONS = frozenset("""
    abs char coalesce glob hex ifnull iif instr length like likely lower ltrim max min nullif quote replace
    round rtrim sign substr substring trim typeof unicode unlikely upper
    date time datetime julianday strftime unixepoch
    acos asin atan atan2 ceil ceiling cos degrees exp floor ln log log10 log2 mod pi pow power radians sin
    sqrt tan trunc
    avg count group_concat string_agg sum total
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
""".split())
MAX_VALUE_BYTES = 1_000_000  # SQLITE_LIMIT_LENGTH: the largest string, blob or row SQLite will build
MAX_SQL_BYTES = 100_000  # SQLITE_LIMIT_SQL_LENGTH
MAX_RESULT_BYTES = 32_000_000  # text and blobs of the rows returned, summed
BUSY_TIMEOUT_S = 0.1  # a locked file is "unavailable" at once rather than after sqlite3's 5 s default
# Strings, quoted identifiers and comments, then words and single characters: enough to find statement
# boundaries and keywords without mistaking text inside a literal for either.
_LEXEME = re.compile(
    r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?|--[^\n]*|/\*.*?(?:\*/|$)|[A-Za-z_][A-Za-z_0-9$]*|\S""",
    re.S,
)


class SQLError(Exception):
    """A statement that was refused or failed; ``kind`` labels the metric (refused, syntax, timeout, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class ExecutionResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool  # more rows existed than the row cap let through
    ms: float = 0.0
    result_key: tuple = field(default=(), repr=False)  # order-insensitive fingerprint used for voting


def check_statement(sql: str) -> str:
    """The statement without a trailing semicolon, or SQLError(kind="refused") naming why it is refused."""
    words: list[str] = []
    statements = 1
    trailing = False  # a lexeme followed the last semicolon
    for match in _LEXEME.finditer(sql):
        lexeme = match.group()
        if lexeme.startswith(("--", "/*")):
            continue
        if lexeme == ";":
            statements += 1
            trailing = False
            continue
        trailing = True
        if statements > 1:
            raise SQLError("refused", "more than one statement")
        if lexeme[0].isalpha() or lexeme[0] == "_":
            words.append(lexeme.upper())
    if not trailing and statements == 1:
        raise SQLError("refused", "empty statement")
    if not words or words[0] not in ("SELECT", "WITH"):
        raise SQLError("refused", f"only SELECT or WITH queries run, not {words[0] if words else 'this'}")
    bad = sorted(FORBIDDEN_KEYWORDS.intersection(words))
    if bad:
        raise SQLError("refused", f"keyword {bad[0]} is not allowed in a read-only query")
    return sql.strip().rstrip(";").strip()


def _authorize(action: int, _arg1, arg2, *_rest) -> int:
    if action == sqlite3.SQLITE_FUNCTION:  # arg2: the function's name as the query spells it
        return sqlite3.SQLITE_OK if (arg2 or "").lower() in ALLOWED_FUNCTIONS else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def error_kind(err: sqlite3.Error) -> str:
    text = str(err).lower()
    if "interrupted" in text:
        return "timeout"
    if "locked" in text or "busy" in text or "unable to open" in text:
        return "unavailable"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return "corrupt"
    if "too big" in text or "too large" in text or "out of memory" in text:
        return "too_large"
    if "no such table" in text:
        return "no_such_table"
    if "no such column" in text or "ambiguous column" in text:
        return "no_such_column"
    if "syntax error" in text or "incomplete input" in text or "unrecognized token" in text:
        return "syntax"
    if "not authorized" in text or "readonly" in text or "read-only" in text:
        return "refused"
    return "other"


class SQLSandbox:
    """Read-only access to one SQLite file with a per-query time limit and row cap."""

    def __init__(self, db_path: str | Path, timeout_s: float = 2.0, max_rows: int = 1000):
        self.db_path = Path(db_path)
        if not self.db_path.is_file():
            raise FileNotFoundError(f"database {self.db_path} does not exist")
        self.timeout_s = timeout_s
        self.max_rows = max_rows

    def _open(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.db_path.resolve()))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        return conn

    def connect(self) -> sqlite3.Connection:
        """A connection for untrusted queries: read-only, query_only, limits and the authorizer."""
        conn = self._open()
        conn.execute("PRAGMA query_only=ON")
        conn.set_authorizer(_authorize)
        return conn

    def read(self, reader: Callable[[sqlite3.Connection], Any]) -> Any:
        """``reader(conn)`` on a trusted read-only connection (schema, stored values); a locked or
        corrupt file raises SQLError naming the file instead of SQLite's bare error."""
        try:
            conn = self._open()
        except sqlite3.Error as err:
            raise SQLError(error_kind(err), f"database {self.db_path.name}: cannot open ({err})") from None
        try:
            return reader(conn)
        except sqlite3.Error as err:
            kind = error_kind(err)
            reason = {"corrupt": "is not a readable SQLite database", "unavailable": "is locked by a writer"}.get(kind)
            raise SQLError(kind, f"database {self.db_path.name}: {reason or 'cannot be read'} ({err})") from None
        finally:
            conn.close()

    def schema(self) -> dict[str, list[tuple[str, str]]]:
        """Table name -> [(column, declared type)], in the database's own order."""
        def reader(conn):
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
            return {t: [(c[1], c[2] or "") for c in conn.execute(f'PRAGMA table_info("{t}")')] for t in tables}
        return self.read(reader)

    def foreign_keys(self) -> list[tuple[str, str, str, str]]:
        """(table, column, referenced table, referenced column) for every declared foreign key."""
        def reader(conn):
            keys = []
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"):
                for fk in conn.execute(f'PRAGMA foreign_key_list("{table}")'):
                    keys.append((table, fk[3], fk[2], fk[4] or "id"))
            return keys
        return self.read(reader)

    def execute(self, sql: str, timeout_s: float | None = None, max_rows: int | None = None) -> ExecutionResult:
        statement = check_statement(sql)
        limit = self.max_rows if max_rows is None else max_rows
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        start = time.perf_counter()
        conn = None
        try:
            conn = self.connect()
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            cursor = conn.execute(statement)
            columns = [d[0] for d in cursor.description or ()]
            rows, size = [], 0
            for row in cursor:
                rows.append(row)
                size += sum(len(v) for v in row if isinstance(v, (str, bytes)))
                if size > MAX_RESULT_BYTES:
                    raise SQLError("too_large", f"the result exceeds {MAX_RESULT_BYTES // 1_000_000} MB")
                if len(rows) > limit:
                    break
        except sqlite3.Error as err:
            kind = error_kind(err)
            message = "time limit exceeded" if kind == "timeout" else str(err)
            raise SQLError(kind, message) from None
        except sqlite3.Warning as err:  # e.g. "You can only execute one statement at a time."
            raise SQLError("refused", str(err)) from None
        except MemoryError:
            raise SQLError("too_large", "the query ran out of memory") from None
        finally:
            if conn is not None:
                conn.close()
        truncated = len(rows) > limit
        rows = rows[:limit]
        return ExecutionResult(columns, rows, truncated, (time.perf_counter() - start) * 1000, result_key(rows))


def result_key(rows: list[tuple]) -> tuple:
    """Rows as an order-insensitive multiset, floats rounded: two queries that agree here return the same answer."""
    def norm(value):
        return round(value, 4) if isinstance(value, float) else value
    return tuple(sorted((tuple(norm(v) for v in row) for row in rows), key=repr))
