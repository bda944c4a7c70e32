"""Value types of the migration system: migrations, results, findings, reports."""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Union

if TYPE_CHECKING:
    from ..database import AppDatabase

__all__ = [
    "AppliedMigration",
    "Finding",
    "Migration",
    "MigrationResult",
    "Status",
    "Step",
    "ValidationReport",
    "checksum_text",
]

#: A migration step: SQL text run as a script, or a callable taking the ``AppDatabase``.
Step = Union[str, Callable[["AppDatabase"], object]]  # noqa: UP007 (runtime alias, Python 3.10)

Status = Literal["applied", "pending", "blocked", "skipped", "failed", "rolled_back"]


def checksum_text(text: str) -> str:
    """SHA-256 of ``text`` with line endings normalised to ``\\n`` (hex digest)."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable_repr(value: object) -> str:
    """``repr(value)`` without memory addresses, which change from one process to the next."""
    return _ADDRESS.sub("", repr(value))


def _name_of(obj: object) -> str:
    """``module.qualname`` of a function or class (never its ``repr``)."""
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if qualname is None:  # an instance of a class without a name of its own
        return f"{_name_of(type(obj))} instance"
    return f"{module}.{qualname}"


def _source_or_name(obj: object) -> str:
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return _name_of(obj)


def _step_text(step: object) -> str:
    """Checksum material of a step: stable from one process to the next.

    SQL text is itself; a function or method its source; a ``functools.partial`` the
    text of what it wraps plus its arguments; a callable instance its class's source;
    anything else (no source available) its ``module.qualname``.
    """
    if step is None:
        return ""
    if isinstance(step, str):
        return step
    if isinstance(step, functools.partial):
        arguments = [_stable_repr(a) for a in step.args]
        arguments += [f"{k}={_stable_repr(v)}" for k, v in sorted(step.keywords.items())]
        return f"partial({', '.join(arguments)}) of\n{_step_text(step.func)}"
    if inspect.isroutine(step) or inspect.isclass(step):
        return _source_or_name(step)
    return f"instance of\n{_source_or_name(type(step))}"


@dataclass(frozen=True)
class Migration:
    """One schema change: ``up`` (and optionally ``down``) as SQL text or a callable.

    ``destructive=True`` declares that ``up`` may lose data, so it is applied only
    when approved. ``transactional=False`` runs ``up``/``down`` outside any
    transaction (for statements such as ``VACUUM``): such a migration is not atomic,
    is not undone on failure and may run twice when processes race, so keep it
    idempotent; unless approved as destructive it first runs on a private copy, so
    that data loss or failure is found before the real file changes.
    ``foreign_keys=False`` runs it with foreign-key enforcement off
    (needed to rebuild a table) and checks every foreign key before committing.
    ``checksum`` defaults to a hash of ``up`` and ``down`` (SQL text, or callables'
    source: stable from one process to the next); discovery sets it to the hash of
    the file and ``source`` to the file's path.

    Raises:
        ValueError: ``version`` is not an int >= 1, or ``name`` is empty.
        TypeError: ``up`` (or a given ``down``) is neither SQL text nor a callable.
    """

    version: int
    """The migration's number (>= 1): migrations apply in version order."""
    name: str
    """A short name (from the file name for discovered migrations)."""
    up: Step
    """The change: SQL text run as a script, or a callable taking the ``AppDatabase``."""
    down: Step | None = None
    """What undoes ``up`` (for ``rollback`` and ``verify``), or ``None``."""
    destructive: bool = False
    """Declares that ``up`` may lose data: applied only with ``allow_destructive=True``."""
    transactional: bool = True
    """``False`` runs the steps outside a transaction (not atomic; keep them idempotent)."""
    foreign_keys: bool = True
    """``False`` turns foreign-key enforcement off while the step runs, then checks every key."""
    checksum: str = ""
    """SHA-256 (hex) recorded when applied; a different one later means the migration changed."""
    source: str | None = field(default=None, compare=False)
    """The file it was read from, or ``None``; shown in messages."""

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"migration version must be an int >= 1, not {self.version!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"migration {self.version} needs a non-empty name, not {self.name!r}")
        for label, step in (("up", self.up), ("down", self.down)):
            if step is None and label == "down":
                continue
            if not (isinstance(step, str) or callable(step)):
                raise TypeError(
                    f"migration {self.label}: {label} must be SQL text or a callable, "
                    f"not {type(step).__name__}"
                )
        if not self.checksum:
            text = f"{_step_text(self.up)}\n-- down\n{_step_text(self.down)}"
            object.__setattr__(self, "checksum", checksum_text(text))

    @property
    def label(self) -> str:
        """``"3 (add_audit_log)"``, plus the file when known: used in every message."""
        where = f" from {self.source}" if self.source else ""
        return f"{self.version} ({self.name}){where}"


@dataclass(frozen=True)
class Finding:
    """One thing detection saw a migration do; ``loses_data`` findings need approval.

    Detection runs the migration and compares the tables before and after, so it
    sees what the SQL did, whatever the SQL looks like.
    """

    kind: str
    """``"drop_table"``, ``"drop_column"``, ``"delete_rows"``, ``"lose_values"``,
    ``"rename_table"``, ``"rename_column"`` or ``"rebuild_table"``."""
    table: str
    """The table concerned."""
    message: str
    """A readable sentence (also ``str(finding)``)."""
    loses_data: bool
    """True when rows or values were lost (a rename or a lossless rebuild is not)."""
    column: str | None = None
    """The column concerned, for column findings."""
    count: int = 0
    """Rows or values lost, when counted."""

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "kind": self.kind,
            "table": self.table,
            "column": self.column,
            "count": self.count,
            "loses_data": self.loses_data,
            "message": self.message,
        }


@dataclass
class MigrationResult:
    """What happened to one migration in a run or rollback."""

    version: int
    """The migration's version."""
    name: str
    """The migration's name."""
    status: Status
    """``"applied"``, ``"rolled_back"``, ``"pending"`` (dry run), ``"blocked"`` (destructive
    and not approved; rolled back), ``"failed"`` (rolled back) or ``"skipped"`` (after a stop)."""
    destructive: bool = False
    """The migration declares itself destructive."""
    duration_ms: float = 0.0
    """Time the step took, in milliseconds."""
    error: BaseException | None = None
    """Why it was blocked or failed (a [`MigrationError`][appdb.MigrationError]), else ``None``."""
    detected: list[Finding] = field(default_factory=list)
    """What detection saw the migration do."""

    @property
    def loses_data(self) -> bool:
        """True when detection found data loss."""
        return any(f.loses_data for f in self.detected)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (``error`` as its message)."""
        return {
            "version": self.version,
            "name": self.name,
            "status": self.status,
            "destructive": self.destructive,
            "duration_ms": round(self.duration_ms, 3),
            "error": None if self.error is None else str(self.error),
            "error_type": None if self.error is None else type(self.error).__name__,
            "detected": [f.as_dict() for f in self.detected],
        }


@dataclass(frozen=True)
class AppliedMigration:
    """A row of the bookkeeping table: a migration applied to this database."""

    version: int
    """The migration's version."""
    name: str
    """The migration's name."""
    applied_at: str
    """When it was applied: UTC, ISO 8601 text."""
    checksum: str
    """The migration's checksum when it was applied."""

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "version": self.version,
            "name": self.name,
            "applied_at": self.applied_at,
            "checksum": self.checksum,
        }


@dataclass(frozen=True)
class ValidationReport:
    """What ``MigrationRunner.validate`` found; ``ok`` when nothing is wrong."""

    changed: tuple[AppliedMigration, ...] = ()
    """Applied migrations whose checksum differs from their file now."""
    missing: tuple[AppliedMigration, ...] = ()
    """Applied migrations that are not among the migrations given."""
    out_of_order: tuple[Migration, ...] = ()
    """Pending migrations older than the newest applied one."""

    @property
    def ok(self) -> bool:
        """True when no applied migration changed or vanished and none is out of order."""
        return not (self.changed or self.missing or self.out_of_order)

    def problems(self) -> list[str]:
        """One readable sentence per problem."""
        lines = [
            f"migration {a.version} ({a.name}) changed after it was applied (checksum differs)"
            for a in self.changed
        ]
        lines += [
            f"migration {a.version} ({a.name}) is applied but its file is missing" for a in self.missing
        ]
        lines += [
            f"migration {m.version} ({m.name}) is pending but older than the newest applied one "
            "(out of order)"
            for m in self.out_of_order
        ]
        return lines

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "changed": [a.as_dict() for a in self.changed],
            "missing": [a.as_dict() for a in self.missing],
            "out_of_order": [{"version": m.version, "name": m.name} for m in self.out_of_order],
            "problems": self.problems(),
        }
