"""Pick the live implementation of the hot path: compiled or pure Python.

The only place that reads ``APPDB_NO_EXTENSIONS`` at run time.
"""

from __future__ import annotations

import os
import sys
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

if TYPE_CHECKING:
    from ._fastcache_py import Statement as Statement
else:
    Statement = impl.Statement
    """The class of the statements ``AppDatabase.prepare`` returns (for type hints)."""
