"""Pick the live implementation of the hot path: compiled or pure Python.

The only place that reads ``APPDB_NO_EXTENSIONS`` at run time, and the only place
that knows how to pick a twin: the module-level selection below, :func:`load` for
a twin by name and :func:`using` to make one live for a while (tests, benchmarks).
Another process picks its twin the way users do, through its environment
(:func:`environment`).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING

NO_EXTENSIONS = os.environ.get("APPDB_NO_EXTENSIONS", "") not in ("", "0")

impl: ModuleType
if NO_EXTENSIONS or sys.implementation.name != "cpython":
    from . import _fastcache_py as impl
else:
    try:
        from . import _fastcache as impl  # type: ignore[no-redef, attr-defined, unused-ignore]
    except ImportError:  # no compiled extension in this install
        from . import _fastcache_py as impl

IMPLEMENTATION = "python" if impl.__name__.endswith("_py") else "cython"
"""The implementation of the hot path in use: ``"cython"`` (compiled) or ``"python"``.

``"python"`` when ``APPDB_NO_EXTENSIONS=1`` is set, on PyPy, or when the install
has no compiled extension. Both behave the same; the compiled one is faster.
"""
NATIVE: bool = impl.NATIVE
"""True when the compiled implementation runs statements through SQLite's C API (its native path).

False for the pure-Python implementation, or when the native path is off
([`NATIVE_STATUS`][appdb.NATIVE_STATUS] says why).
"""
NATIVE_STATUS: str = impl.NATIVE_STATUS
"""Why the native path is on or off: ``"on: ..."`` or ``"off: <reason>"``.

Reasons for off: ``APPDB_NO_NATIVE=1``, the pure-Python implementation, an APSW
that cannot load the extension, or an SQLite older than the one it was compiled for.
"""

_MODULES = {"cython": "._fastcache", "python": "._fastcache_py"}

if TYPE_CHECKING:
    from ._fastcache_py import Statement as Statement
else:
    Statement = impl.Statement
    # The class of the statements AppDatabase.prepare returns (for type hints); the
    # documentation reads the twin's docstrings through the TYPE_CHECKING import above.


def load(name: str) -> ModuleType:
    """The twin called ``name``: ``"cython"`` (compiled) or ``"python"``.

    Unlike the selection at import, a missing compiled module is an ``ImportError``
    here, not a fallback: who asks for a twin by name means that one.
    """
    if name not in _MODULES:
        raise ValueError(f"twin must be one of {', '.join(_MODULES)}, not {name!r}")
    return importlib.import_module(_MODULES[name], __package__)


@contextmanager
def using(name: str) -> Iterator[ModuleType]:
    """Make twin ``name`` the live one until the block exits; yields its module.

    Databases built meanwhile (by any thread) use it and keep it after the block;
    ``IMPLEMENTATION`` and ``Statement`` keep naming the twin selected at import.
    """
    global impl
    module = load(name)
    previous, impl = impl, module
    try:
        yield module
    finally:
        impl = previous


def environment(name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (``os.environ`` by default) under which a new process picks twin ``name``.

    The child selects at import like any user's process, so it falls back to the
    pure-Python twin if ``"cython"`` is missing there: a child should report
    ``appdb.IMPLEMENTATION`` for its parent to check.
    """
    load(name)  # the name is valid, and the compiled twin exists here at least
    env = dict(os.environ if base is None else base)
    if name == "python":
        env["APPDB_NO_EXTENSIONS"] = "1"
    else:
        env.pop("APPDB_NO_EXTENSIONS", None)
    return env
