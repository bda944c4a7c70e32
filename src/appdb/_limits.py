"""Deadlines and step budgets for statements: ``db.deadline()``, ``query_timeout`` and async.

Nothing here is on the hot path: the twins call in only while a core has limits
active (a ``deadline`` block is open somewhere, or the database has a
``query_timeout``, or ``appdb.aio`` runs a statement on the event loop).

A limit is enforced with SQLite's progress handler, installed on the connection a
statement runs on for the duration of that one call: SQLite calls it every
``CHECK_STEPS`` virtual-machine steps, and a handler that returns True interrupts
the statement (``apsw.InterruptError``), which this module turns into
``appdb.QueryTimeout``. An interrupted write rolls back its own changes (SQLite
rolls back the whole transaction when the statement was part of one).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from threading import get_ident
from typing import Any

import apsw

from .errors import QueryTimeout

__all__ = [
    "CHECK_STEPS",
    "BudgetExceeded",
    "Limit",
    "Token",
    "WouldBlock",
    "current",
    "nowait",
    "start",
]

#: Virtual-machine steps between two deadline checks. A Python call every 1,000
#: steps costs about 2% on a long scan and bounds the overshoot to well under 1 ms.
CHECK_STEPS = 1000


class WouldBlock(Exception):
    """Internal: a call made with ``nowait`` would have to wait (for the writer or a reader)."""


class BudgetExceeded(Exception):
    """Internal: a statement ran out of its step budget (``appdb.aio`` re-runs it in a thread)."""


class Limit:
    """One open limit: a deadline and/or a step budget for one database's statements."""

    __slots__ = ("budget", "cancelled", "core", "deadline", "nowait", "parent", "seconds")

    def __init__(
        self,
        core: object,
        deadline: float | None,
        seconds: float | None,
        *,
        budget: int = 0,
        nowait: bool = False,
        parent: Limit | None = None,
    ) -> None:
        self.core = core
        self.deadline = deadline
        self.seconds = seconds
        self.budget = budget
        self.nowait = nowait
        self.parent = parent
        self.cancelled = False


current: ContextVar[Limit | None] = ContextVar("appdb_limit", default=None)


def find(core: Any) -> Limit | None:
    """The innermost open limit of ``core`` in this thread or task.

    First the limit of the ``appdb.aio`` call running on ``core``'s event loop, if this
    is that thread: ``appdb.aio`` sets ``core.inline = (thread id, limit)`` for the
    length of one synchronous call on the loop. Not ``current``: every asyncio task has
    a context of its own, so a ContextVar's cache misses on each task switch, and its
    get, set and reset were 2,100 of the 16,500 instructions of an inline point read
    (callgrind); a dict keyed by core was 1,070, the attribute about 200.
    """
    running = core.inline
    if running is not None and running[0] == get_ident():
        return running[1]  # type: ignore[no-any-return]
    limit = current.get()
    while limit is not None and limit.core is not core:
        limit = limit.parent
    return limit


class Token:
    """The limit of one call: armed on the connection the call runs on, then disarmed."""

    __slots__ = (
        "budget",
        "budget_hit",
        "connection",
        "core",
        "deadline",
        "limit",
        "seconds",
        "steps",
        "writer",
    )

    def __init__(
        self,
        core: Any,
        limit: Limit | None,
        deadline: float | None,
        seconds: float | None,
        writer: bool = False,
    ) -> None:
        self.core = core
        self.limit = limit
        self.writer = writer
        self.connection: apsw.Connection | None = None
        self.deadline = deadline
        self.seconds = seconds
        self.budget = limit.budget if limit is not None else 0
        self.budget_hit = False
        self.steps = 0

    def _check(self) -> bool:
        """SQLite's progress handler: True interrupts the statement."""
        limit = self.limit
        if limit is not None:
            if limit.cancelled:
                return True
            if self.budget:
                self.steps += 1
                if self.steps * self._every() >= self.budget:
                    self.budget_hit = True
                    return True
        deadline = self.deadline
        return deadline is not None and time.monotonic() >= deadline

    def _every(self) -> int:
        return min(CHECK_STEPS, self.budget) if self.budget else CHECK_STEPS

    def arm(self, connection: apsw.Connection) -> None:
        """Install the handler on ``connection`` (the caller holds the connection)."""
        self.connection = connection
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self._end_transaction()
            raise self.timeout(None)
        # Under its own id: APSW keeps several progress handlers per connection, so a
        # nested call's handler, or one the application installed, is left alone.
        connection.set_progress_handler(self._check, self._every(), id=self)

    def disarm(self, connection: apsw.Connection) -> None:
        try:
            connection.set_progress_handler(None, id=self)
        except apsw.Error:  # closed meanwhile
            pass

    def timeout(self, sql: str | None) -> QueryTimeout:
        what = f"statement {sql!r}" if sql is not None else "statement"
        if self.limit is not None and self.limit.cancelled:
            return QueryTimeout(f"{what} was interrupted: its task was cancelled")
        return QueryTimeout(f"{what} did not finish within its deadline of {self.seconds:g} s")

    def translate(self, exc: BaseException, sql: str) -> BaseException | None:
        """The error to raise instead of ``exc`` (an interrupt caused by this limit), or None."""
        if not isinstance(exc, apsw.InterruptError):
            return None
        if self.budget_hit:
            return BudgetExceeded(sql)
        if (self.limit is not None and self.limit.cancelled) or (
            self.deadline is not None and time.monotonic() >= self.deadline
        ):
            self._end_transaction()
            return self.timeout(sql)
        return None

    def _end_transaction(self) -> None:
        """An interrupted statement ends the writer's transaction, whatever it was.

        SQLite itself rolls back the whole transaction when it interrupts a write
        inside one; an interrupted read would leave it open. Rolling back in both
        cases gives one rule: a ``QueryTimeout`` inside a transaction ends it (a block
        that swallows the error gets ``TransactionError`` when it ends).
        """
        connection = self.connection
        if not self.writer or connection is None:
            return
        if connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except apsw.Error:  # already gone: nothing left to undo
                pass
        # A transaction begun with SQL (exec("BEGIN")) sent every thread's reads to the
        # writer; it is over now, whether SQLite or the ROLLBACK above ended it.
        if not connection.in_transaction:
            self.core.raw_transaction = False


def nowait(core: Any) -> None:
    """Raise ``WouldBlock`` when the calling task must not wait (an ``appdb.aio`` inline call)."""
    limit = find(core)
    if limit is not None and limit.nowait:
        raise WouldBlock


def start(core: Any, writer: bool, short: bool = False) -> Token | None:
    """The token for one call on ``core``, or None when nothing limits it.

    Raises ``WouldBlock`` for a ``nowait`` limit when the call would run on the
    writer (whose lock another thread may hold). A ``short`` statement (a program
    without a loop: microseconds of work) needs no progress handler: only a
    deadline that has already passed stops it (measured: arming and disarming the
    handler is 1.3 of the 5.9 us of an inline ``appdb.aio`` point read).
    """
    limit = find(core)
    timeout = core.query_timeout
    if limit is None and timeout is None:
        return None
    deadline = None
    seconds = None
    if limit is not None:
        if limit.nowait and writer:
            raise WouldBlock
        deadline = limit.deadline
        seconds = limit.seconds
    if timeout is not None:
        own = time.monotonic() + timeout
        if deadline is None or own < deadline:
            deadline = own
            seconds = timeout
    if short and (deadline is None or time.monotonic() < deadline):
        return None
    return Token(core, limit, deadline, seconds, writer)
