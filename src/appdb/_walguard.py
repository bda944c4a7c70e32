"""The WAL checkpoint guard: SQLite's autocheckpoint, made so that readers cannot starve it."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable

import apsw

from ._policy import EXTERNAL, recorded_policy

__all__ = [
    "TRUNCATE_WAIT_MS",
    "WAL_GUARD_BACKOFF_CAP",
    "WAL_GUARD_FACTOR",
    "guard_size",
    "install_wal_guard",
]

logger = logging.getLogger("appdb")

#: The WAL may grow to this many times ``wal_autocheckpoint`` pages before a commit
#: waits (briefly, see ``TRUNCATE_WAIT_MS``) for readers so that it can truncate the WAL.
WAL_GUARD_FACTOR = 4

#: Longest time (ms) one commit waits for readers in a truncating checkpoint
#: (less when ``busy_timeout`` is shorter).
TRUNCATE_WAIT_MS = 200

#: After failed truncating checkpoints the distance (in frames) to the next attempt
#: doubles, up to this many times ``WAL_GUARD_FACTOR x wal_autocheckpoint``.
WAL_GUARD_BACKOFF_CAP = 16


class _WalGuard:
    """Replacement for SQLite's autocheckpoint hook that readers cannot starve.

    SQLite's own hook runs a PASSIVE checkpoint once the WAL holds
    ``wal_autocheckpoint`` pages. A PASSIVE checkpoint cannot copy frames newer than
    the oldest open read snapshot, and the WAL restarts from its beginning only
    when it was fully copied while no reader used it, so a reader that keeps
    querying while a writer keeps committing lets the WAL grow without limit
    (measured: 100 MB in 8 s). This hook does the same PASSIVE checkpoint and, once
    the WAL reaches ``WAL_GUARD_FACTOR`` times that size (the *stride*), a TRUNCATE
    checkpoint that waits up to ``TRUNCATE_WAIT_MS`` (polling) for the readers of
    older snapshots to finish, then empties the WAL.

    The hook runs inside the commit, with the connection's lock held, so it never
    waits longer than that: when readers outlast the wait (a long-lived read
    transaction), the next attempt comes one stride later, then two, four, ... up
    to ``WAL_GUARD_BACKOFF_CAP`` strides; a successful truncation (or the WAL
    being reset by anyone else) starts over. Errors never reach the committing
    caller: the commit has already succeeded.

    Before each truncation it reads the checkpoint policy recorded in the database:
    once another process has recorded "external" (Litestream owns checkpoints and
    must not see the WAL reset behind its back), this process stops truncating and
    keeps to PASSIVE checkpoints, which Litestream runs itself.
    """

    __slots__ = ("autocheckpoint", "disowned", "distance", "failed_at", "next_truncate")

    def __init__(self, autocheckpoint: int) -> None:
        self.autocheckpoint = autocheckpoint
        self.disowned = False
        self._reset()

    @property
    def stride(self) -> int:
        return self.autocheckpoint * WAL_GUARD_FACTOR

    def _reset(self) -> None:
        self.next_truncate = self.stride
        self.distance = self.stride  # to the attempt after the next failure
        self.failed_at = 0

    def __call__(self, connection: apsw.Connection, dbname: str, frames: int) -> int:
        try:
            if frames < self.failed_at:  # the WAL restarted since the last failure
                self._reset()
            if frames < self.autocheckpoint:
                return apsw.SQLITE_OK
            if frames >= self.next_truncate and not self._disowned(connection):
                self._truncate(connection, dbname, frames)
            else:
                connection.wal_checkpoint(dbname, apsw.SQLITE_CHECKPOINT_PASSIVE)
        except apsw.BusyError:
            pass  # a PASSIVE checkpoint found a writer busy: the next commit tries again
        except Exception as exc:  # e.g. an I/O error: the next commit tries again
            logger.debug("automatic WAL checkpoint failed: %s", exc)
        return apsw.SQLITE_OK

    def _disowned(self, connection: apsw.Connection) -> bool:
        """True once the database records that another process owns checkpoints."""
        if not self.disowned and recorded_policy(connection) == EXTERNAL:
            self.disowned = True
            logger.warning(
                "the database now records checkpoints='external': this process, opened with 'auto', "
                "stops truncating the WAL (reopen it to follow the recorded policy)"
            )
        return self.disowned

    def _truncate(self, connection: apsw.Connection, dbname: str, frames: int) -> None:
        timeout = connection.execute("PRAGMA busy_timeout").get
        timeout = timeout if isinstance(timeout, int) and timeout >= 0 else 0
        connection.set_busy_handler(_short_waits(min(timeout, TRUNCATE_WAIT_MS)))
        try:
            connection.wal_checkpoint(dbname, apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.BusyError:
            self.next_truncate = frames + self.distance
            self.distance = min(self.distance * 2, self.stride * WAL_GUARD_BACKOFF_CAP)
            self.failed_at = frames
            return
        finally:
            connection.set_busy_timeout(timeout)
        self._reset()


def _short_waits(timeout_ms: int) -> Callable[[int], bool]:
    """A busy handler polling every millisecond for up to ``timeout_ms``.

    SQLite's own handler backs off to 100 ms sleeps, far longer than the queries a
    truncating checkpoint waits for.
    """
    deadline = time.monotonic() + timeout_ms / 1000

    def handler(attempts: int) -> bool:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
        return True

    return handler


_wal_guards: weakref.WeakKeyDictionary[apsw.Connection, _WalGuard] = weakref.WeakKeyDictionary()


def install_wal_guard(connection: apsw.Connection) -> None:
    """Take over ``wal_autocheckpoint`` with :class:`_WalGuard` (0 keeps checkpoints off).

    SQLite then reports ``PRAGMA wal_autocheckpoint`` as 0; ``guard_size`` (and so
    ``AppDatabase.pragma``) reports the guard's size instead.
    """
    pages = connection.execute("PRAGMA wal_autocheckpoint").get
    if isinstance(pages, int) and pages > 0:
        guard = _WalGuard(pages)
        connection.set_wal_hook(guard)
        _wal_guards[connection] = guard
    else:
        _wal_guards.pop(connection, None)


def guard_size(connection: apsw.Connection) -> int | None:
    """The ``wal_autocheckpoint`` size the guard on ``connection`` uses, None without a guard."""
    guard = _wal_guards.get(connection)
    return None if guard is None else guard.autocheckpoint
