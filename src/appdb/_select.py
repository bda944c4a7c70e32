"""Pick the live implementation of the hot path: compiled or pure Python."""

from __future__ import annotations

import os
import sys
from types import ModuleType

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
