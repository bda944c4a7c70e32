"""Writing a backup file: a private temporary file next to the destination, renamed into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import apsw

from ._files import FILE_MODE, is_database_file, remove_with_companions


def write_backup(
    dest_path: str | os.PathLike[str],
    *,
    overwrite: bool,
    database: str | None,
    identity: tuple[int, int] | None,
    copy: Callable[[apsw.Connection], None],
) -> str:
    """Create ``dest_path`` by calling ``copy(target_connection)`` on a temporary file; return it.

    ``database``/``identity`` name the live database file (None when in memory):
    it, or one of its companions, is never a valid destination. Each call gets
    its own owner-only temporary file (``tempfile.mkstemp``), so overlapping
    backups never touch each other's files; on failure the temporary file and
    any ``-wal``/``-shm``/``-journal`` next to it are removed.
    """
    dest = os.fspath(dest_path)
    if not isinstance(dest, str):
        raise TypeError(
            f"backup destination must be a str or os.PathLike[str], not {type(dest_path).__name__}"
        )
    if database is not None and is_database_file(dest, database, identity):
        raise ValueError(
            f"backup destination {dest!r} is the database being backed up (or one of its "
            "-wal/-shm/-journal files): choose another path"
        )
    if os.path.isdir(dest):
        raise IsADirectoryError(f"backup destination {dest!r} is a directory")
    if os.path.exists(dest) and not overwrite:
        raise FileExistsError(
            f"backup destination {dest!r} already exists (pass overwrite=True to replace it)"
        )
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(dest)}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # mkstemp already uses 0600; say so explicitly
        finally:
            os.close(fd)
        target = apsw.Connection(temporary)
        try:
            copy(target)
        finally:
            target.close()
        if overwrite:
            os.replace(temporary, dest)
        else:
            _publish_new(temporary, dest)
    except BaseException:
        remove_with_companions(temporary)
        raise
    return dest


def _publish_new(temporary: str, dest: str) -> None:
    """Move ``temporary`` to ``dest`` only if ``dest`` still does not exist.

    A hard link fails atomically when the name is taken (another backup or process
    created it since the check above), so an existing file is never replaced.
    Filesystems without hard links fall back to a last check and a rename.
    """
    try:
        os.link(temporary, dest)
    except FileExistsError:
        raise FileExistsError(
            f"backup destination {dest!r} already exists (pass overwrite=True to replace it)"
        ) from None
    except OSError:  # no hard links here (some network and FAT filesystems)
        if os.path.exists(dest):
            raise FileExistsError(
                f"backup destination {dest!r} already exists (pass overwrite=True to replace it)"
            ) from None
        os.replace(temporary, dest)
        return
    os.unlink(temporary)
