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

    native_headers = ["src/appdb/_native.h", "src/appdb/include/sqlite3.h", "src/appdb/include/sqlite3ext.h"]
    ext_modules = cythonize(
        [
            Extension(
                "appdb._fastcache",
                ["src/appdb/_fastcache.pyx"],
                # SQLite's public-domain headers, vendored: the module is also a SQLite
                # loadable extension (see _native.h), and links no SQLite of its own.
                include_dirs=["src/appdb", "src/appdb/include"],
                depends=native_headers,
                # Only PyInit__fastcache and the extension entry point are exported.
                extra_compile_args=[] if sys.platform == "win32" else ["-fvisibility=hidden"],
            )
        ],
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
