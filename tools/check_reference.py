"""Every public name is in the API reference: reads the built site's objects.inv.

    python tools/check_reference.py [SITE_DIR]      # default: site

The public names are each public module's ``__all__`` (imported); the inventory is the
one mkdocstrings writes (Sphinx inventory version 2: four header lines, then zlib data
with one ``name domain:role priority uri display`` line per object). Exit code 1 lists
the missing names. ``__version__`` is left out: the reference's ``filters: ["!^_"]``
hides it (the package docstring mentions it).
"""

from __future__ import annotations

import importlib
import sys
import zlib
from pathlib import Path

PUBLIC_MODULES = (
    "appdb",
    "appdb.aio",
    "appdb.types",
    "appdb.migrations",
    "appdb.replication",
    "appdb.pragmas",
    "appdb.errors",
    "appdb.cli",
)


def inventory(site: Path) -> set[str]:
    """The object names in ``site/objects.inv``."""
    path = site / "objects.inv"
    if not path.is_file():
        raise SystemExit(f"{path}: no inventory; build the site first (mkdocs build -d {site})")
    data = path.read_bytes()
    lines = data.split(b"\n", 4)
    if not lines[0].startswith(b"# Sphinx inventory version 2"):
        raise SystemExit(f"{site / 'objects.inv'}: not a version 2 inventory")
    text = zlib.decompress(lines[4]).decode("utf-8")
    return {line.split(" ", 1)[0] for line in text.splitlines() if line.strip()}


def public_names() -> list[str]:
    """``module.name`` for every name in every public module's ``__all__``."""
    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names.append(module_name)
        names += [f"{module_name}.{name}" for name in module.__all__ if name != "__version__"]
    return names


def main(argv: list[str]) -> int:
    site = Path(argv[1] if len(argv) > 1 else "site")
    known = inventory(site)
    wanted = public_names()
    missing = [name for name in wanted if name not in known]
    if missing:
        print(f"{len(missing)} public names are missing from the API reference ({site}):")
        for name in missing:
            print(f"  {name}")
        return 1
    print(f"all {len(wanted)} public names are in the API reference ({site}/objects.inv)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
