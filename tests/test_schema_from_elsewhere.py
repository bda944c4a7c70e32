"""Schema changes made by another connection (another process, a migration tool) show at once."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb


@pytest.mark.parametrize("readers", [None, 0])
def test_columns_follow_a_change_made_by_another_connection(
    impl: ModuleType, db_path: Path, readers: int | None
) -> None:
    with appdb.init_database(db_path, readers=readers) as db:
        db.exec("CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 2)")
        statement = db.prepare("SELECT * FROM t")
        assert statement.columns == ("a", "b")
        other = apsw.Connection(str(db_path))
        try:
            other.execute("ALTER TABLE t ADD COLUMN c")
            assert statement.columns == ("a", "b", "c")  # before the statement runs again
            assert db.prepare("SELECT * FROM t").columns == ("a", "b", "c")
            other.execute("ALTER TABLE t DROP COLUMN a")
            assert statement.columns == ("b", "c")
            other.execute("ALTER TABLE t RENAME COLUMN b TO beta")
            assert statement.columns == ("beta", "c")
            assert statement.get() == {"beta": 2, "c": None}
        finally:
            other.close()


def test_columns_inside_a_transaction_see_its_own_changes(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE t (a)")
    statement = db.prepare("SELECT * FROM t")
    with db.transaction():
        db.exec("ALTER TABLE t ADD COLUMN b")
        assert statement.columns == ("a", "b")
    assert statement.columns == ("a", "b")
