"""appdb: a fast, safe SQLite layer on APSW with cached, compiled prepared statements.

Open a database with [`init_database`][appdb.init_database]; it returns an
[`AppDatabase`][appdb.AppDatabase], whose ``prepare()`` gives
[`Statement`][appdb.Statement]s. The asyncio API is [`appdb.aio`][appdb.aio],
migrations are [`appdb.migrations`][appdb.migrations], value types
[`appdb.types`][appdb.types].

SQLite's own errors surface as APSW's exception classes (``apsw.Error`` and
subclasses such as ``apsw.BusyError`` and ``apsw.ConstraintError``); appdb's own
errors subclass [`appdb.Error`][appdb.Error]. ``appdb.__version__`` is the
package version.
"""

from __future__ import annotations

from ._open import default_readers, init_database, set_checkpoint_policy
from ._select import IMPLEMENTATION, NATIVE, NATIVE_STATUS, Statement
from ._types import CacheStats, CheckpointResult, PoolStatus, RunResult
from .database import AppDatabase, Transaction
from .errors import (
    CheckpointPolicyError,
    ConversionError,
    DatabaseClosedError,
    DatabaseOpenError,
    DestructiveMigrationError,
    DuplicateColumnError,
    Error,
    InvalidPragmaError,
    MigrationError,
    QueryTimeout,
    TransactionError,
)
from .pragmas import DEFAULT_PRAGMAS, JOURNAL_SIZE_LIMIT

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PRAGMAS",
    "IMPLEMENTATION",
    "JOURNAL_SIZE_LIMIT",
    "NATIVE",
    "NATIVE_STATUS",
    "AppDatabase",
    "CacheStats",
    "CheckpointPolicyError",
    "CheckpointResult",
    "ConversionError",
    "DatabaseClosedError",
    "DatabaseOpenError",
    "DestructiveMigrationError",
    "DuplicateColumnError",
    "Error",
    "InvalidPragmaError",
    "MigrationError",
    "PoolStatus",
    "QueryTimeout",
    "RunResult",
    "Statement",
    "Transaction",
    "TransactionError",
    "__version__",
    "default_readers",
    "init_database",
    "set_checkpoint_policy",
]
