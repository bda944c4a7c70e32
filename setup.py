"""Build script: compiles ``src/appdb/_fastcache.pyx`` unless APPDB_NO_EXTENSIONS=1."""

from __future__ import annotations

import os
import sys

from setuptools import setup

NO_EXTENSIONS = os.environ.get("APPDB_NO_EXTENSIONS", "") not in ("", "0")

ext_modules = []
if not NO_EXTENSIONS and sys.implementation.name == "cpython":
    from Cython.Build import cythonize
    from setuptools import Extension

    ext_modules = cythonize(
        [Extension("appdb._fastcache", ["src/appdb/_fastcache.pyx"])],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
            # Argument Clinic style signatures become __text_signature__, so
            # inspect.signature() (and mypy.stubtest) can read them with binding=False.
            "embedsignature.format": "clinic",
        },
    )

setup(ext_modules=ext_modules)
