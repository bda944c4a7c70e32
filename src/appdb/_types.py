"""Small value types shared by both implementations of the hot path."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CacheStats", "CheckpointResult", "PoolStatus", "RunResult"]


class RunResult(NamedTuple):
    """What a write statement did: rows changed and the last inserted rowid."""

    changes: int
    last_insert_rowid: int


class CacheStats(NamedTuple):
    """Counters of the prepared-statement cache."""

    hits: int
    misses: int
    evictions: int
    size: int
    capacity: int


class CheckpointResult(NamedTuple):
    """Frame counts reported by a WAL checkpoint."""

    wal_frames: int
    checkpointed_frames: int


class PoolStatus(NamedTuple):
    """The connections of a database right now (``AppDatabase.pool_status()``)."""

    #: Size of the reader pool (0: the writer runs everything).
    readers: int
    #: Reader connections open (they open lazily, up to ``readers``).
    open: int
    #: Readers in use by a call or an unfinished ``iterate()``.
    busy: int
    #: Idle connections (the writer included) still holding a read snapshot or a
    #: transaction: 0 unless a transaction is open. Busy readers are not counted.
    snapshots: int
