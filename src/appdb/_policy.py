"""The checkpoint policy: who checkpoints the WAL, recorded in the database so every process agrees.

``"auto"`` (appdb's WAL guard checkpoints from inside commits) is what a database
without a record uses. ``"external"`` means another process owns checkpoints:
Litestream ships the WAL and asks applications to leave checkpointing to it
(``wal_autocheckpoint = 0``) and never to run RESTART or TRUNCATE checkpoints
behind its back (https://litestream.io/tips/). The policy is kept in appdb's own
key/value table ``appdb_settings`` so that a process opening the file with the
other policy is refused instead of silently truncating the WAL under Litestream.

Imports neither the facade nor the connection setup: the caller passes the raw connection.
"""

from __future__ import annotations

import apsw

from ._ledger import SETTINGS_TABLE
from .errors import CheckpointPolicyError

__all__ = [
    "AUTO",
    "EXTERNAL",
    "POLICIES",
    "SETTINGS_TABLE",
    "check_policy",
    "choose_policy",
    "recorded_policy",
    "refused_checkpoint",
    "settle_policy",
    "write_policy",
]

AUTO, EXTERNAL = "auto", "external"
POLICIES = (AUTO, EXTERNAL)

_KEY = "checkpoints"

#: Checkpoint modes refused under "external" unless forced. RESTART and TRUNCATE reset
#: the WAL, which Litestream must do itself: a reset it did not see breaks its position
#: and forces a new snapshot (benbjohnson/litestream#547), and one while it is down left
#: replicas that could not be restored (#752). FULL resets nothing but holds the write
#: lock while it waits for every reader, including the read transaction Litestream
#: keeps open to hold the WAL in place (#547), so writers stall for the whole
#: busy_timeout (the outage of #724 was Litestream's own RESTART doing exactly this);
#: #752 also lists FULL among the checkpoints that must not happen behind Litestream's
#: back. PASSIVE is what Litestream runs itself (its non-blocking tier,
#: litestream.io/guides/wal-truncate-threshold): it copies frames without waiting or
#: resetting the WAL, so it stays allowed.
REFUSED_MODES = frozenset({"full", "restart", "truncate"})


def check_policy(value: object, *, allow_none: bool = True) -> str | None:
    """``value`` when it names a policy (or is None and ``allow_none``); else ``ValueError``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value not in POLICIES:
        names = " or ".join(repr(p) for p in POLICIES)
        raise ValueError(f"checkpoints must be {names}{' or None' if allow_none else ''}, not {value!r}")
    return value


def _table_exists(connection: apsw.Connection) -> bool:
    found = connection.execute(
        "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?", (SETTINGS_TABLE,)
    ).get
    return found is not None


def recorded_policy(connection: apsw.Connection) -> str | None:
    """The policy recorded in the database, None when there is no record."""
    if not _table_exists(connection):
        return None
    value = connection.execute(f"SELECT value FROM main.{SETTINGS_TABLE} WHERE key = ?", (_KEY,)).get
    return value if isinstance(value, str) and value in POLICIES else None


def write_policy(connection: apsw.Connection, policy: str, *, replace: bool) -> None:
    """Record ``policy``; with ``replace=False`` an existing record is kept (first writer wins)."""
    connection.execute(
        f"CREATE TABLE IF NOT EXISTS main.{SETTINGS_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    connection.execute(f"{verb} INTO main.{SETTINGS_TABLE} (key, value) VALUES (?, ?)", (_KEY, policy))


def choose_policy(recorded: str | None, requested: str | None, path: str) -> str:
    """The policy to open with: the requested one, which must agree with the record.

    ``requested=None`` follows the record ("auto" without one). Without a record any
    policy is accepted; with one, another policy is ``CheckpointPolicyError``.
    """
    if requested is None:
        return recorded or AUTO
    if recorded is not None and recorded != requested:
        raise CheckpointPolicyError(
            f"database {path!r} records checkpoints={recorded!r}, but this process opens it with "
            f"checkpoints={requested!r}; nothing was changed. Open it with checkpoints={recorded!r} "
            f"or None (follow the record), or change the record first with "
            f"appdb.set_checkpoint_policy({path!r}, {requested!r}) or "
            f"`appdb --db {path} checkpoint-policy {requested}` (stop the other processes first)"
        )
    return requested


def settle_policy(connection: apsw.Connection, requested: str | None, *, path: str, readonly: bool) -> str:
    """Check ``requested`` against the record and return the policy to use.

    The first writable open asking for a policy other than "auto" records it
    (``INSERT OR IGNORE``, then read back, so of two processes racing to record
    different policies one is refused). Read-only opens check but never write.
    """
    recorded = recorded_policy(connection)
    policy = choose_policy(recorded, requested, path)
    if recorded is None and policy != AUTO and not readonly:
        write_policy(connection, policy, replace=False)
        policy = choose_policy(recorded_policy(connection), requested, path)
    return policy


def refused_checkpoint(policy: str, mode: str) -> CheckpointPolicyError | None:
    """The error for a ``mode`` checkpoint the policy forbids (None when it is allowed)."""
    if policy != EXTERNAL or mode not in REFUSED_MODES:
        return None
    return CheckpointPolicyError(
        f"refusing a {mode.upper()} checkpoint: the database's checkpoint policy is 'external' "
        f"(another process such as Litestream owns checkpoints, and a {mode.upper()} checkpoint behind "
        f"its back breaks its replication or stalls writers); only PASSIVE is allowed. "
        f"Force it with db.checkpoint({mode!r}, force=True) or `appdb checkpoint --mode {mode} --force` "
        f"only when nothing replicates this database now"
    )
