"""Small value types shared by both implementations of the hot path."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CacheStats", "CheckpointResult", "RunResult"]


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
