"""Carrying a database across ``os.fork()``: the child never touches the parent's handles.

SQLite's documentation (howtocorrupt.html, "Carrying an open database connection
across a fork()") forbids using or closing a connection in a child process: the
child inherits the parent's memory but not its POSIX locks, so closing a copied
handle can checkpoint and delete a WAL that the parent still uses. After a fork
the twins notice (a counter bumped by ``os.register_at_fork``) and hand every
inherited APSW object to :func:`leak`, which keeps it alive for the rest of the
child's life, so neither garbage collection nor interpreter shutdown ever runs
``sqlite3_close``/``sqlite3_finalize`` on it; the child then opens connections of
its own.
"""

from __future__ import annotations

import ctypes

__all__ = ["leak"]

_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = [ctypes.py_object]
_incref.restype = None
_kept: list[object] = []


def leak(obj: object) -> None:
    """Keep ``obj`` alive until the process ends, interpreter shutdown included."""
    if obj is None:
        return
    _incref(obj)  # a reference nobody owns: never released, so never deallocated
    _kept.append(obj)
