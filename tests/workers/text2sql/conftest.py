"""Fixtures of the Text-to-SQL tests: the generated databases, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def t2s_dbs(tmp_path_factory):
    """The folder holding the generated store/school/library/company databases."""
    from tessera.workers.text2sql.data.generate import build

    return build(tmp_path_factory.mktemp("text2sql-dbs"))
