"""Exceptions raised by appdb itself.

SQLite's own errors are not wrapped: they surface as APSW's exception classes
(``apsw.SQLError``, ``apsw.ConstraintError``, ``apsw.BusyError``, ...), all of which
subclass ``apsw.Error``.  appdb's own errors subclass :class:`Error`.
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
    """Base class of every error raised by appdb itself."""


class ConversionError(Error, ValueError):
    """``appdb.types`` could not turn a value into an SQLite value or back.

    The message names the parameter (binding) or the column (reading) and the value.
    """


class DuplicateColumnError(Error, ValueError):
    """A statement returning dict rows has two result columns with the same name.

    A dict keeps one value per key, so one of them would be lost; the message names
    the duplicates. Give them distinct names with ``AS`` or use ``row_type="tuple"``.
    """


class DatabaseClosedError(Error):
    """The database (or a statement belonging to it) was used after ``close()``."""


class DatabaseOpenError(Error):
    """``init_database`` could not open the file as a usable SQLite database."""


class CheckpointPolicyError(Error):
    """The database's checkpoint policy forbids this; the message names the policies and the way out.

    Raised by ``init_database`` when the file records another policy than the one
    asked for (nothing is changed), and by ``checkpoint()`` for a mode that would
    break an external owner of checkpoints (``force=True`` runs it anyway).
    """


class InvalidPragmaError(Error, ValueError):
    """A pragma name or value was rejected; the message names the pragma."""


class MigrationError(Error):
    """A migration could not be discovered, validated, applied or rolled back."""


class DestructiveMigrationError(MigrationError):
    """A migration would destroy data and was not approved."""


class TransactionError(Error):
    """A transaction ended in a way that may have lost its changes."""


class QueryTimeout(Error, TimeoutError):
    """A statement ran past its deadline (``db.deadline()`` or ``query_timeout``) and was interrupted.

    The statement's own changes are rolled back (SQLite rolls back a whole write
    transaction when a statement inside it is interrupted); the connection stays usable.
    """
