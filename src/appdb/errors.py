"""Exceptions raised by appdb itself.

SQLite's own errors are not wrapped: they surface as APSW's exception classes
(``apsw.SQLError``, ``apsw.ConstraintError``, ``apsw.BusyError``, ...), all of which
subclass ``apsw.Error``.  appdb's own errors subclass ``Error``.
"""

from __future__ import annotations

__all__ = [
    "CheckpointPolicyError",
    "ConversionError",
    "DatabaseClosedError",
    "DatabaseOpenError",
    "DestructiveMigrationError",
    "DuplicateColumnError",
    "Error",
    "InvalidPragmaError",
    "MigrationError",
    "QueryTimeout",
    "TransactionError",
]


class Error(Exception):
    """Base class of every error raised by appdb itself.

    ``except appdb.Error`` catches appdb's errors but not SQLite's, which are
    APSW's (``apsw.Error`` and subclasses such as ``apsw.BusyError``).
    """


class ConversionError(Error, ValueError):
    """``appdb.types`` could not turn a value into an SQLite value or back.

    Raised by a statement's methods on a database opened with ``types=``. The
    message names the parameter (binding) or the column (reading) and the value.
    Also a ``ValueError``. Importable as ``appdb.ConversionError`` and
    ``appdb.types.ConversionError``.
    """


class DuplicateColumnError(Error, ValueError):
    """A statement returning dict rows has two result columns with the same name.

    A dict keeps one value per key, so one of them would be lost; the message names
    the duplicates. Give them distinct names with ``AS`` or use ``row_type="tuple"``.
    """


class DatabaseClosedError(Error):
    """The database (or a statement belonging to it) was used after ``close()``.

    Raised by every method of ``AppDatabase``, ``Statement`` and the ``appdb.aio``
    classes that touches the database, once it is closed (or, for ``appdb.aio``,
    closing). A transaction block whose database was closed inside raises it at
    commit.
    """


class DatabaseOpenError(Error):
    """``init_database`` could not open the file as a usable SQLite database.

    The path is a directory, the file cannot be created or read, it is not a
    SQLite database (or is corrupted), or a read-only open found no file. The
    message names the path; ``__cause__`` holds APSW's error when there is one.
    Also raised by ``set_checkpoint_policy`` for a missing file.
    """


class CheckpointPolicyError(Error):
    """The database's checkpoint policy forbids this; the message names the policies and the way out.

    Raised by ``init_database`` when the file records another policy than the one
    asked for (nothing is changed), and by ``checkpoint()`` for a mode that would
    break an external owner of checkpoints (``force=True`` runs it anyway).
    """


class InvalidPragmaError(Error, ValueError):
    """A pragma name or value was rejected; the message names the pragma.

    Raised by ``init_database(pragmas=...)``, ``AppDatabase.pragma()`` and
    ``appdb.pragmas``: the name is not in SQLite's pragma list, or the value is not
    an int, a bool or a simple word. Also a ``ValueError``.
    """


class MigrationError(Error):
    """A migration could not be discovered, validated, applied or rolled back.

    Raised by ``init_database(migrations=...)`` and ``appdb.migrations``: a bad
    file name or file, two migrations with one version, a step that failed (it was
    rolled back; ``__cause__`` holds SQLite's error), an applied migration whose
    file changed, pending migrations on a read-only database, or the write lock
    held by another process for longer than the runner waits.
    """


class DestructiveMigrationError(MigrationError):
    """A migration would destroy data and was not approved.

    ``MigrationResult.error`` of a ``blocked`` migration; the message names what
    would be lost and how to approve it (``allow_destructive=True``). A subclass
    of ``MigrationError``.
    """


class TransactionError(Error):
    """A transaction ended in a way that may have lost its changes.

    Raised when a ``db.transaction()`` block ends without an error but the
    transaction had already ended: SQLite rolled it back (a full disk, an
    interrupted write) or SQL inside the block ended it. Nothing after that point
    was saved.
    """


class QueryTimeout(Error, TimeoutError):
    """A statement ran past its deadline (``db.deadline()`` or ``query_timeout``) and was interrupted.

    The statement's own changes are rolled back (SQLite rolls back a whole write
    transaction when a statement inside it is interrupted); the connection stays usable.
    """
