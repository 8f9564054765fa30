"""Bad input to the CLI and the benchmark gets one line naming the field (the app builder's args: tests/workers/runtime)."""

from __future__ import annotations

import pytest

from tessera.cli.main import main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_missing_database_is_named(capsys, tmp_path):
    assert main(["text2sql", "--db", str(tmp_path / "none.sqlite"), "--question", "How many?", "--direct"]) == 1
    assert "--db" in one_line_error(capsys)


def test_a_file_that_is_no_database_is_named(capsys, tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    assert main(["text2sql", "--db", str(junk), "--question", "How many?", "--direct"]) == 1
    assert "not a readable SQLite database" in one_line_error(capsys)


def test_an_empty_question_is_named(capsys, t2s_dbs):
    assert main(["text2sql", "--db", str(t2s_dbs / "store.sqlite"), "--question", "  ", "--direct"]) == 1
    assert "--question" in one_line_error(capsys)


@pytest.mark.parametrize("content,field", [("[]", "non-empty JSON list"), ("{bad", "cannot read"),
                                           ('[{"db": "store.sqlite", "question": "q"}]', "[0].sql"),
                                           ('[{"db": "nope.sqlite", "question": "q", "sql": "SELECT 1"}]', "[0].db")])
def test_the_benchmark_names_what_is_wrong_with_a_question_file(capsys, tmp_path, t2s_dbs, content, field):
    questions = tmp_path / "q.json"
    questions.write_text(content)
    assert main(["bench", "text2sql", "--questions", str(questions), "--db-dir", str(t2s_dbs)]) == 1
    assert field in one_line_error(capsys)
