"""The reader pool's slow paths, shared by both twins of the hot path.

The twins take an idle reader off a stack and put it back (``checkout`` and
``checkin``): both are atomic under the GIL and make no system call.
Everything else (opening a reader, waiting when every reader is busy, closing,
re-opening after ``fork()``) is here, written once.

Readers are opened lazily, one per thread that runs a read while all others are
busy, up to ``max_readers``; after that a thread waits for one. A thread that
already holds a reader (an unfinished ``iterate()``, or a SQL function calling
back into appdb) never waits for another: it gets one more connection, so it
cannot deadlock against itself.
"""

from __future__ import annotations

import threading
from typing import Any

import apsw

from . import _limits
from ._fork import leak
from ._sqlinfo import schema_version
from .errors import DatabaseClosedError

__all__ = [
    "after_fork",
    "checkin_short",
    "checkout_at_once",
    "checkout_short",
    "checkout_slow",
    "close_readers",
    "current_schema_version",
    "discard",
    "hand_over",
    "return_spare",
]


def current_schema_version(core: Any) -> int:
    """The schema cookie as this thread would read it now (on a reader, or the writer it holds).

    ``Statement.columns`` compares it with the cookie the statement was described
    at, so that a column another connection added, dropped or renamed shows at once.
    """
    if core.routes_to_reader():
        slot = checkout_short(core)
        try:
            return schema_version(slot.connection)
        finally:
            checkin_short(core, slot)
    connection = core.acquire_writer()
    try:
        return schema_version(connection)
    finally:
        core.release_writer()


def _closed(core: Any) -> DatabaseClosedError:
    return DatabaseClosedError(f"the database is closed: {core.path}")


def _pool_readers(core: Any) -> int:
    """Readers open in the pool proper (the spares kept for short reads not counted)."""
    return sum(1 for slot in list(core.slots) if not slot.spare)


def _holds_a_reader(core: Any, me: int) -> bool:
    return any(slot.owner == me for slot in list(core.slots))


def _open_reader(core: Any, spare: bool = False) -> Any:
    """Open one more reader (the caller reserved it by counting ``core.opening``)."""
    try:
        connection = core.opener(True)
    except BaseException:
        with core.cond:
            core.opening -= 1
            core.cond.notify()
        raise
    with core.cond:
        core.opening -= 1
        if core.closed:
            connection.close(True)
            raise _closed(core)
        slot = core.new_slot(connection, len(core.slots) + 1)
        slot.spare = spare  # before others can see it in core.slots
        core.slots.append(slot)
        return slot


def checkout_slow(core: Any) -> Any:
    """A reader for the calling thread when none is free: open one, or wait for one."""
    me = threading.get_ident()
    cond = core.cond
    waited = False
    with cond:
        while True:
            if core.closed:
                raise _closed(core)
            # readers handed over are for threads that waited, not for newcomers
            slot = core.handed.pop(0) if waited and core.handed else core.idle_pop()
            if slot is not None:
                slot.owner = me
                return slot
            if _pool_readers(core) + core.opening < core.max_readers or _holds_a_reader(core, me):
                core.opening += 1
                break
            limit = _limits.find(core)
            if limit is not None and limit.nowait:
                raise _limits.WouldBlock
            core.waiters += 1
            try:
                cond.wait(0.05)  # a timeout too: Ctrl-C is seen while waiting
            finally:
                core.waiters -= 1
            waited = True
    slot = _open_reader(core)
    slot.owner = me
    return slot


def checkout_at_once(core: Any) -> Any:
    """A reader for a short read, which holds the lane, when none is idle: a new one, or a spare.

    Never waits, so the lane's holder never waits for a reader that a thread
    waiting for the lane holds (an open ``iterate()``). Waiting here instead, with
    the readers handed over in turn, made every call a thread switch: 8 threads on
    a pool of 4 read 23,000 rows/s, one thread alone 212,000. While the pool has
    room, the new reader joins it. A spare is opened beyond the pool the first time
    long reads hold every reader, and kept apart for
    short reads (``return_spare``): short reads take turns on the lane, so one spare
    is enough (one more for each level of re-entry from a SQL function), and long
    reads stay bounded by the pool's size. An ``appdb.aio`` inline read does not
    open one on the event loop: it runs in a thread instead.
    """
    with core.cond:
        if core.closed:
            raise _closed(core)
        slot = core.idle_pop()  # readers handed over are for the threads that wait
        if slot is None and core.spares:
            slot = core.spares.pop()
        if slot is not None:
            slot.owner = threading.get_ident()
            return slot
        limit = _limits.find(core)
        if limit is not None and limit.nowait:  # an event loop: a thread opens it
            raise _limits.WouldBlock
        spare = _pool_readers(core) + core.opening >= core.max_readers  # else the pool grows
        core.opening += 1
    slot = _open_reader(core, spare)
    slot.owner = threading.get_ident()
    return slot


def checkout_short(core: Any) -> Any:
    """A reader for a moment's work off the hot path (describing a statement), as short reads get one.

    Takes the lane, then a reader at once (``checkout_at_once``): never waits while
    long reads hold every reader. ``checkin_short`` gives both back.
    """
    core.check_fork()  # in a child process: the parent's readers are never used
    lane = core.lane
    lane.acquire()
    try:
        return checkout_at_once(core)
    except BaseException:
        lane.release()
        raise


def checkin_short(core: Any, slot: Any) -> None:
    """Give back a reader from ``checkout_short``, then the lane."""
    try:
        core.checkin(slot)
    finally:
        core.lane.release()


def return_spare(core: Any, slot: Any) -> None:
    """A spare reader came back: keep it for the next short read that finds no idle reader."""
    with core.cond:
        if core.closed:  # close() ran meanwhile and may have missed this one
            discard(core, slot)
        else:
            core.spares.append(slot)


def hand_over(core: Any, slot: Any) -> None:
    """A reader came back while threads wait: give it to one of them.

    It does not go back on the idle stack, where the thread that returned it (or
    any other running thread) would take it again at once: a thread that reads in
    a loop could keep a waiting thread out for ever.
    """
    with core.cond:
        if core.closed:  # close() ran meanwhile: nobody takes it any more
            discard(core, slot)
        elif core.waiters > len(core.handed):
            core.handed.append(slot)
            core.cond.notify()
        else:
            core.idle_push(slot)


def discard(core: Any, slot: Any) -> None:
    """A reader came back after ``close()``: close it now."""
    slot.owner = 0
    try:
        slot.connection.close(True)
    except apsw.Error:  # already closed, or closing races a fork
        pass


def close_readers(core: Any) -> None:
    """Close every idle reader; busy ones close as their calls return (``discard``)."""
    with core.cond:
        idle = core.idle_take_all() + core.handed + core.spares
        core.handed = []
        core.spares = []
        core.cond.notify_all()
    for slot in idle:
        discard(core, slot)


def after_fork(core: Any, lock: Any) -> None:
    """In a child process: forget the parent's connections and open our own writer.

    ``lock`` is a fresh writer lock (the inherited one may be held by a thread that
    does not exist here). In-memory databases keep their (copied) connection: they
    have no file the parent could lose, and reopening would give an empty database.
    """
    memory = core.path in (":memory:", "")
    core.lock = lock
    core.lane = type(lock)()
    core.cond = threading.Condition()
    core.waiters = 0
    core.handed = []
    core.spares = []
    core.opening = 0
    core.raw_transaction = False
    if not memory:
        leak(core.writer.connection)
        for slot in core.slots:
            leak(slot.connection)
        core.slots = []
        core.idle_take_all()
        if not core.closed:
            core.set_writer(core.opener(False))
        core.epoch += 1  # statements hand their inherited cursors to leak() too
