"""Small value types shared by both implementations of the hot path."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CacheStats", "CheckpointResult", "PoolStatus", "RunResult"]


class RunResult(NamedTuple):
    """What a write statement did (``Statement.run()``, ``run_many()``): rows changed and the last rowid."""

    changes: int
    """Rows inserted, updated or deleted by the statement (the total of a ``run_many`` batch)."""
    last_insert_rowid: int
    """The rowid of the last row inserted on the connection (SQLite's ``last_insert_rowid()``)."""


class CacheStats(NamedTuple):
    """Counters of the prepared-statement cache (``AppDatabase.statement_cache_stats()``)."""

    hits: int
    """``prepare()`` calls answered from the cache."""
    misses: int
    """``prepare()`` calls that compiled a new statement."""
    evictions: int
    """Statements dropped to stay within ``capacity`` (least recently used first)."""
    size: int
    """Statements in the cache now."""
    capacity: int
    """The most statements kept (``init_database(statement_cache_size=...)``)."""


class CheckpointResult(NamedTuple):
    """Frame counts reported by a WAL checkpoint (``AppDatabase.checkpoint()``)."""

    wal_frames: int
    """Frames (pages) in the WAL file."""
    checkpointed_frames: int
    """Frames copied back into the database file; equal to ``wal_frames`` when the checkpoint finished."""


class PoolStatus(NamedTuple):
    """The connections of a database right now (``AppDatabase.pool_status()``)."""

    readers: int
    """Size of the reader pool (0: the writer runs everything)."""
    open: int
    """Reader connections open (they open lazily, up to ``readers``)."""
    busy: int
    """Readers in use by a call or an unfinished ``iterate()``."""
    snapshots: int
    """Idle connections (the writer included) still holding a read snapshot or a transaction.

    0 unless a transaction is open. Busy readers are not counted.
    """
