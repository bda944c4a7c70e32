"""appdb: a fast, safe SQLite layer on APSW with cached, compiled prepared statements.

SQLite's own errors surface as APSW's exception classes (``apsw.Error`` and
subclasses); appdb's own errors subclass :class:`appdb.Error`.
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
