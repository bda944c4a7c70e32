"""The database file on disk: preparing its path, owner-only creation, and identity checks."""

from __future__ import annotations

import os

from .errors import DatabaseOpenError

FILE_MODE = 0o600
"""Mode of every file appdb creates (SQLite copies it to ``-wal`` and ``-shm``)."""

COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
"""Files SQLite may create next to a database file."""

_HEADER = b"SQLite format 3\x00"


def prepare_file(path: str, readonly: bool) -> None:
    """Check the path and create the file owner-only (SQLite copies its mode to -wal/-shm)."""
    if os.path.isdir(path):
        raise DatabaseOpenError(f"cannot open database {path!r}: the path is a directory")
    if readonly:
        if not os.path.exists(path):
            raise DatabaseOpenError(f"cannot open database {path!r} read-only: the file does not exist")
        return
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise DatabaseOpenError(
            f"cannot create the directory {parent!r} for database {path!r}: {exc.strerror or exc}"
        ) from exc
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise DatabaseOpenError(f"cannot create database file {path!r}: {exc.strerror or exc}") from exc
    os.close(fd)


def file_identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file at ``path``, None when it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def file_intact(path: str, identity: tuple[int, int] | None) -> bool:
    """The file at ``path`` is still the one opened, and still starts like a SQLite database.

    A connection keeps writing to the file it opened even after that file was deleted
    or replaced (everything written then is lost), and SQLite in WAL mode does not
    notice a file overwritten behind its back until it reads the damaged pages.
    """
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            header = handle.read(len(_HEADER))
    except OSError:
        return False
    if identity is not None and (info.st_dev, info.st_ino) != identity:
        return False
    return header == _HEADER or (header == b"" and info.st_size == 0)


def is_database_file(candidate: str, database: str, identity: tuple[int, int] | None) -> bool:
    """``candidate`` names the database file ``database`` (opened as ``identity``) or a companion.

    Compares the file itself when it exists (any spelling, symlink or hard link),
    and the absolute paths otherwise.
    """
    names = [database] + [database + suffix for suffix in COMPANION_SUFFIXES]
    target = os.path.abspath(candidate)
    if any(target == os.path.abspath(name) for name in names):
        return True
    if identity is not None and file_identity(candidate) == identity:
        return True
    for name in names:
        try:
            if os.path.samefile(candidate, name):
                return True
        except OSError:  # one of them does not exist
            continue
    return False


def remove_with_companions(path: str) -> None:
    """Delete ``path`` and its ``-wal``/``-shm``/``-journal`` files; missing ones are fine."""
    for name in (path, *(path + suffix for suffix in COMPANION_SUFFIXES)):
        try:
            os.remove(name)
        except FileNotFoundError:
            pass
