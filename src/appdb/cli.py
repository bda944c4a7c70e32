"""The ``appdb`` command line: migrations and maintenance of one database file.

Exit codes: 0 ok, 1 failure (``status`` too when an applied migration's file
changed), 2 usage error, 3 a destructive migration is waiting for approval.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import apsw

from . import __version__
from ._open import init_database, set_checkpoint_policy
from ._policy import POLICIES
from .database import AppDatabase
from .errors import Error
from .migrations import MigrationResult, MigrationRunner, discover_migrations, verify_migrations
from .migrations.adopt import SOURCES, TABLES
from .migrations.discovery import FILE_PATTERN
from .migrations.model import Migration

__all__ = ["EXIT_APPROVAL", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main"]

# One assignment each, so that the API reference (griffe) sees them and their docstrings.
EXIT_OK = 0
"""Exit code 0: the command did what was asked (``status``: nothing is wrong)."""
EXIT_FAILURE = 1
"""Exit code 1: the command failed (an error, a failed check, a failed migration), or
``status`` found an applied migration whose file changed."""
EXIT_USAGE = 2
"""Exit code 2: a usage error (an unknown command or option, a bad value); argparse's code."""
EXIT_APPROVAL = 3
"""Exit code 3: a destructive migration is waiting for approval (``--allow-destructive``)."""
DEFAULT_DB = "./data/app.db"
DEFAULT_MIGRATIONS = "./migrations"


class UsageError(Exception):
    """Bad arguments found after parsing (exit code 2)."""


@dataclass
class Report:
    """What a command prints: text lines for people, ``data`` for ``--json``."""

    code: int = EXIT_OK
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


# -- output helpers -------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Rows as an aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    render = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return [render[0], "  ".join("-" * w for w in widths), *render[1:]]


def _notes(result: MigrationResult) -> str:
    notes = [f.message for f in result.detected]
    if result.error is not None and result.status in ("failed", "blocked"):
        notes.insert(0, str(result.error) if result.status == "failed" else "needs --allow-destructive")
    return "; ".join(notes)


def results_table(results: Sequence[MigrationResult]) -> list[str]:
    """Migration results as a table with what detection found."""
    rows = [
        (r.version, r.name, r.status, "yes" if r.destructive else "", f"{r.duration_ms:.1f}", _notes(r))
        for r in results
    ]
    return table(("version", "name", "status", "declared destructive", "ms", "notes"), rows)


def exit_code(results: Sequence[MigrationResult]) -> int:
    """1 when a migration failed, 3 when one waits for approval, else 0."""
    statuses = {r.status for r in results}
    if "failed" in statuses:
        return EXIT_FAILURE
    if "blocked" in statuses:
        return EXIT_APPROVAL
    return EXIT_OK


# -- opening ----------------------------------------------------------------------
def _open(args: argparse.Namespace, *, create: bool, readonly: bool = False) -> AppDatabase:
    path = args.db
    if not create and not os.path.exists(path):
        raise Error(f"database {path!r} does not exist")
    return init_database(path, readonly=readonly, run_migrations=False)


def _open_or_empty(args: argparse.Namespace, *, readonly: bool = True) -> tuple[AppDatabase, bool]:
    """The database (read-only unless asked), or an empty in-memory one when it does not exist yet."""
    if os.path.exists(args.db):
        return init_database(args.db, readonly=readonly, run_migrations=False), True
    return init_database(":memory:", run_migrations=False), False


def _cwd_importable() -> None:
    """Put the working directory first on ``sys.path`` unless it is there, as ``python -m`` does.

    The ``appdb`` script's ``sys.path`` starts with the script's own folder, so without
    this ``--migrations myapp.migrations`` would not find ``./myapp``.
    """
    here = os.path.realpath(os.getcwd())
    if not any(os.path.realpath(entry or os.curdir) == here for entry in sys.path):
        sys.path.insert(0, here)


def _migrations(args: argparse.Namespace) -> list[Migration]:
    if not os.path.exists(args.migrations):  # a package name
        _cwd_importable()
    return discover_migrations(args.migrations)


# -- commands -----------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace) -> Report:
    migrations = _migrations(args)
    db = _open(args, create=True) if not args.dry_run else _open_or_empty(args)[0]
    with db:
        results = MigrationRunner(db).run_migrations(
            migrations,
            dry_run=args.dry_run,
            allow_destructive=args.allow_destructive,
            target=args.to,
            repair_checksums=args.repair,
        )
        version = db.get_schema_version()
    report = Report(exit_code(results), data={"dry_run": args.dry_run, "version": version})
    report.data["results"] = [r.as_dict() for r in results]
    if results:
        report.lines += results_table(results)
    verb = "would apply" if args.dry_run else "applied"
    done = sum(r.status in ("applied", "pending") for r in results)
    report.lines.append(f"{verb} {done} migration(s); the database is at version {version}")
    report.lines += _advice(results)
    return report


def _advice(results: Sequence[MigrationResult]) -> list[str]:
    blocked = [r for r in results if r.status == "blocked"]
    if not blocked:
        return []
    return [str(blocked[0].error)]


def cmd_status(args: argparse.Namespace) -> Report:
    migrations = _migrations(args)
    db, exists = _open_or_empty(args)
    with db:
        runner = MigrationRunner(db)
        applied = runner.get_applied_migrations()
        waiting = runner.run_migrations(migrations, dry_run=True)
        validation = runner.validate(migrations)
        problems = validation.problems()
        version = db.get_schema_version()
    # a changed applied file makes `migrate` and `validate` fail, so it fails here too
    report = Report(EXIT_FAILURE if validation.changed else exit_code(waiting))
    report.data = {
        "database": args.db,
        "exists": exists,
        "version": version,
        "applied": [a.as_dict() for a in applied],
        "pending": [r.as_dict() for r in waiting],
        "problems": problems,
    }
    report.lines.append(
        f"database {args.db}: version {version}" + ("" if exists else " (it does not exist yet)")
    )
    rows: list[tuple[object, ...]] = [(a.version, a.name, "applied", a.applied_at) for a in applied]
    rows += [(r.version, r.name, r.status, _notes(r)) for r in waiting]
    if rows:
        report.lines += table(("version", "name", "state", "applied at / notes"), rows)
    report.lines.append(f"{len(applied)} applied, {len(waiting)} pending")
    report.lines += [f"problem: {p}" for p in problems]
    report.lines += _advice(waiting)
    return report


def cmd_adopt(args: argparse.Namespace) -> Report:
    migrations = _migrations(args)
    with _open(args, create=False) as db:
        runner = MigrationRunner(db)
        source = args.source
        if source == "auto":  # named for the report; adopt() itself explains none or several
            found = runner.ledger_sources()
            source = found[0] if len(found) == 1 else source
        adopted = runner.adopt(migrations, source=source)
        version = db.get_schema_version()
    report = Report(
        data={
            "source": source,
            "table": TABLES[source],
            "adopted": [a.as_dict() for a in adopted],
            "version": version,
        }
    )
    if adopted:
        report.lines += table(
            ("version", "name", "recorded at"), [(a.version, a.name, a.applied_at) for a in adopted]
        )
    report.lines.append(
        f"adopted {len(adopted)} migration(s) from {source}'s {TABLES[source]} without running them; "
        f"the database is at version {version}"
    )
    return report


def cmd_rollback(args: argparse.Namespace) -> Report:
    migrations = _migrations(args)
    with _open(args, create=False) as db:
        results = MigrationRunner(db).rollback(
            migrations, to_version=args.to, allow_destructive=args.allow_destructive
        )
        version = db.get_schema_version()
    report = Report(exit_code(results), data={"version": version, "results": [r.as_dict() for r in results]})
    if results:
        report.lines += results_table(results)
    done = sum(r.status == "rolled_back" for r in results)
    report.lines.append(f"rolled back {done} migration(s); the database is at version {version}")
    blocked = [r for r in results if r.status == "blocked"]
    if blocked:
        report.lines.append(str(blocked[0].error))
    return report


_PY_TEMPLATE = '''"""Migration {version}: {name}."""

from appdb import AppDatabase

# destructive = True  # uncomment when up() may lose data (it then needs approval)


def up(db: AppDatabase) -> None:
    db.exec(
        """
        -- CREATE TABLE example (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        """
    )


def down(db: AppDatabase) -> None:
    db.exec(
        """
        -- DROP TABLE example;
        """
    )
'''

_SQL_TEMPLATE = """-- Migration {version}: {name}
-- destructive: false
-- migrate:up
-- CREATE TABLE example (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
SELECT 1;

-- migrate:down
-- DROP TABLE example;
SELECT 1;
"""


#: A diesel migration folder: ``2015-11-29-054053_create_users`` is version 20151129054053.
_DIESEL_FOLDER = re.compile(r"(?P<digits>[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6})_[A-Za-z0-9_-]+\Z")
#: Versions this large are timestamps (dbmate, sqlx, diesel: YYYYMMDDHHMMSS).
_TIMESTAMP_VERSION = 10**13


def _next_version(folder: str) -> tuple[int, int]:
    """The next migration version in ``folder`` and the digits to write it with.

    Sequential folders count up (``003`` after ``002``). A folder of timestamp
    versions gets the current UTC time (or the newest version + 1, if that is later),
    as dbmate, sqlx and diesel name theirs.
    """
    versions: list[tuple[int, int]] = []
    for entry in os.listdir(folder):
        match = FILE_PATTERN.match(entry)
        if match:
            versions.append((int(match["version"]), len(match["version"])))
            continue
        diesel = _DIESEL_FOLDER.match(entry)
        if diesel and os.path.isdir(os.path.join(folder, entry)):
            digits = diesel["digits"].replace("-", "")
            versions.append((int(digits), len(digits)))
    newest = max((v for v, _ in versions), default=0)
    if newest >= _TIMESTAMP_VERSION:
        now = int(datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S"))
        return max(now, newest + 1), 14
    return newest + 1, max([3, *(w for _, w in versions)])


def cmd_new(args: argparse.Namespace) -> Report:
    name = re.sub(r"[^a-z0-9]+", "_", args.name.lower()).strip("_")
    if not name:
        raise UsageError(f"migration name {args.name!r} has no letters or digits")
    folder = args.migrations
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise Error(f"{folder!r} is not a directory")
    os.makedirs(folder, exist_ok=True)
    version, width = _next_version(folder)
    extension = "sql" if args.sql else "py"
    path = os.path.join(folder, f"{version:0{width}d}_{name}.{extension}")
    template = _SQL_TEMPLATE if args.sql else _PY_TEMPLATE
    with open(path, "x", encoding="utf-8") as handle:
        handle.write(template.format(version=version, name=name))
    return Report(lines=[f"created {path}"], data={"path": path, "version": version, "name": name})


def cmd_validate(args: argparse.Namespace) -> Report:
    migrations = _migrations(args)
    db, exists = _open_or_empty(args, readonly=not args.repair)
    with db:
        runner = MigrationRunner(db)
        repaired = runner.repair(migrations) if args.repair and exists else []
        result = runner.validate(migrations)
    report = Report(EXIT_OK if result.ok else EXIT_FAILURE, data=result.as_dict())
    report.data["repaired"] = [a.as_dict() for a in repaired]
    report.lines += [f"re-recorded the checksum of migration {a.version} ({a.name})" for a in repaired]
    report.lines += [f"problem: {p}" for p in result.problems()]
    report.lines.append(
        "ok: migrations match the database" if result.ok else f"{len(result.problems())} problem(s)"
    )
    return report


def cmd_verify(args: argparse.Namespace) -> Report:
    migrations = _migrations(args)
    if os.path.exists(args.db):
        with _open(args, create=False, readonly=True) as db:
            reports = verify_migrations(db, migrations)
    else:
        reports = verify_migrations(None, migrations)
    bad = [r for r in reports if not r.ok]
    report = Report(
        EXIT_FAILURE if bad else EXIT_OK, data={"ok": not bad, "migrations": [r.as_dict() for r in reports]}
    )
    rows = [(r.version, r.name, "ok" if r.ok else "PROBLEM", "; ".join(r.problems)) for r in reports]
    if rows:
        report.lines += table(("version", "name", "result", "problems"), rows)
    report.lines.append(f"{len(reports) - len(bad)} of {len(reports)} pending migration(s) are reversible")
    return report


def cmd_health(args: argparse.Namespace) -> Report:
    with _open(args, create=False, readonly=True) as db:
        healthy = db.is_healthy()
        check = db.pragma("quick_check")
        info: dict[str, Any] = {
            "database": args.db,
            "healthy": healthy,
            "quick_check": check if isinstance(check, str) else [r.get("quick_check") for r in check],
            "schema_version": db.get_schema_version(),
            "journal_mode": db.pragma("journal_mode"),
            "checkpoints": db.checkpoints,
            "page_count": db.pragma("page_count"),
            "page_size": db.pragma("page_size"),
            "wal_bytes": os.path.getsize(args.db + "-wal") if os.path.exists(args.db + "-wal") else 0,
        }
        if os.path.exists(args.migrations) or not args.migrations_default:
            info["pending_migrations"] = len(MigrationRunner(db).pending(_migrations(args)))
    ok = healthy and info["quick_check"] == "ok"
    report = Report(EXIT_OK if ok else EXIT_FAILURE, data=info)
    report.lines += [f"{key}: {value}" for key, value in info.items()]
    return report


def cmd_checkpoint(args: argparse.Namespace) -> Report:
    with _open(args, create=False) as db:  # under the recorded checkpoint policy
        result = db.checkpoint(args.mode, force=args.force)
        policy = db.checkpoints
    data = {
        "mode": args.mode,
        "checkpoints": policy,
        "wal_frames": result.wal_frames,
        "checkpointed_frames": result.checkpointed_frames,
    }
    return Report(
        data=data,
        lines=[f"checkpoint ({args.mode}): {result.checkpointed_frames} of {result.wal_frames} frames"],
    )


def cmd_checkpoint_policy(args: argparse.Namespace) -> Report:
    if args.policy is None:
        with _open(args, create=False, readonly=True) as db:
            policy = db.checkpoints
        return Report(data={"checkpoints": policy}, lines=[f"checkpoint policy of {args.db}: {policy}"])
    before = set_checkpoint_policy(args.db, args.policy)
    return Report(
        data={"checkpoints": args.policy, "before": before},
        lines=[f"checkpoint policy of {args.db}: {before} -> {args.policy}"],
    )


def cmd_backup(args: argparse.Namespace) -> Report:
    with _open(args, create=False) as db:
        dest = db.backup(args.dest, overwrite=args.overwrite)
    return Report(
        data={"backup": dest, "bytes": os.path.getsize(dest)}, lines=[f"backed up {args.db} to {dest}"]
    )


def cmd_replicate(args: argparse.Namespace) -> Report:
    from . import _litestream, replication

    if args.print_config:
        text = replication.config_for(args.db, args.to, args.sync_interval)
        return Report(data={"config": text}, lines=[text.rstrip("\n")])
    command = args.exec_command[1:] if args.exec_command[:1] == ["--"] else args.exec_command
    if os.path.isfile(args.db) and (warning := _litestream.policy_warning(args.db)):
        print(f"appdb: warning: {warning}", file=sys.stderr)
    code = _litestream.run_foreground(
        args.db, args.to, args.sync_interval, command, lambda text: print(f"appdb: {text}", file=sys.stderr)
    )
    return Report(code, data={"litestream_exit_code": code}, lines=[f"litestream exited with code {code}"])


def cmd_restore(args: argparse.Namespace) -> Report:
    from . import replication

    version = replication.restore(args.replica, args.to, timestamp=args.timestamp, force=args.force)
    return Report(
        data={"restored": os.path.abspath(args.to), "from": args.replica, "schema_version": version},
        lines=[f"restored {args.to} from {args.replica}: schema version {version}"],
    )


def _seconds(text: str) -> float:
    """A positive interval: seconds, or a number with ms, s, m or h (``1s``, ``500ms``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", text)
    value = float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2] or "s"] if match else 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive interval: {text!r} (e.g. 1s, 500ms)")
    return value


# -- parser ---------------------------------------------------------------------------
def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a version must be 0 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``appdb`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help=f"database file (default {DEFAULT_DB})")
    common.add_argument(
        "--migrations",
        default=argparse.SUPPRESS,
        help=f"migrations directory or package (default {DEFAULT_MIGRATIONS})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser = argparse.ArgumentParser(
        prog="appdb",
        parents=[common],
        description="Migrate and maintain an appdb SQLite database.",
        epilog="exit codes: 0 ok, 1 failure (status: an applied migration changed), 2 usage error, "
        "3 a destructive migration awaits approval",
    )
    parser.add_argument("--version", action="version", version=f"appdb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], Report], text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    sub = add("migrate", cmd_migrate, "apply pending migrations")
    sub.add_argument("--dry-run", action="store_true", help="run them on a private copy and report")
    sub.add_argument("--allow-destructive", action="store_true", help="approve migrations that destroy data")
    sub.add_argument("--to", type=_version, default=None, metavar="V", help="stop at version V")
    sub.add_argument(
        "--repair", action="store_true", help="re-record checksums of changed applied migrations"
    )
    add("status", cmd_status, "applied and pending migrations, with what detection found")
    sub = add("adopt", cmd_adopt, "record as applied the migrations another tool's table lists")
    sub.add_argument(
        "--from",
        dest="source",
        choices=("auto", *SOURCES),
        default="auto",
        help="the tool whose table to read (default: the one found)",
    )
    sub = add("rollback", cmd_rollback, "run down steps back to a version")
    sub.add_argument("--to", type=_version, required=True, metavar="V", help="the version to end at")
    sub.add_argument("--allow-destructive", action="store_true", help="approve down steps that destroy data")
    sub = add("new", cmd_new, "create the next-numbered migration file from a template")
    sub.add_argument("name", help="what the migration does, e.g. add_audit_log")
    sub.add_argument("--sql", action="store_true", help="an .sql file instead of a .py file")
    sub = add("validate", cmd_validate, "check applied migrations against their files")
    sub.add_argument(
        "--repair", action="store_true", help="re-record checksums of changed applied migrations"
    )
    add("verify", cmd_verify, "apply up, down, up on a private copy and report what is not reversible")
    add("health", cmd_health, "check the database file")
    sub = add("checkpoint", cmd_checkpoint, "run a WAL checkpoint")
    sub.add_argument(
        "--mode",
        choices=("passive", "full", "restart", "truncate"),
        default="passive",
        help="SQLite's checkpoint mode (default passive)",
    )
    sub.add_argument(
        "--force", action="store_true", help="run a mode the 'external' checkpoint policy refuses"
    )
    sub = add("checkpoint-policy", cmd_checkpoint_policy, "show or change who checkpoints the WAL")
    sub.add_argument(
        "policy", nargs="?", choices=POLICIES, help="record this policy (stop other processes first)"
    )
    sub = add("backup", cmd_backup, "write a consistent copy of the database")
    sub.add_argument("dest", help="path of the copy")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing file")
    sub = add("replicate", cmd_replicate, "replicate the database with Litestream (in the foreground)")
    sub.add_argument("--to", required=True, metavar="URL", help="replica URL (file://, s3://, sftp://, ...)")
    sub.add_argument(
        "--sync-interval", type=_seconds, default=1.0, metavar="T", help="how often to ship (default 1s)"
    )
    sub.add_argument("--print-config", action="store_true", help="print the Litestream configuration only")
    sub.add_argument(
        "exec_command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="run COMMAND under Litestream"
    )
    sub = add("restore", cmd_restore, "restore a Litestream replica into a new file")
    sub.add_argument("--from", dest="replica", required=True, metavar="URL", help="replica URL")
    sub.add_argument("--to", required=True, metavar="FILE", help="the new database file")
    sub.add_argument("--timestamp", default=None, metavar="ISO8601", help="the point in time to restore")
    sub.add_argument("--force", action="store_true", help="replace an existing FILE")
    return parser


def _emit(report: Report, as_json: bool, out: TextIO) -> None:
    if as_json:
        payload = {"ok": report.code == EXIT_OK, "exit_code": report.code, **report.data}
        out.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        out.write("\n".join(report.lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``appdb`` command (``appdb`` and ``python -m appdb`` call this).

    Errors are printed (``appdb: error: ...`` on stderr; with ``--json``, also as a
    JSON object on stdout) and become exit code 1 rather than exceptions. The
    [command reference](../reference/cli.md) lists every command, option and exit code.

    Args:
        argv: The arguments after the command's name (``None``: ``sys.argv[1:]``).

    Returns:
        The exit code: [`EXIT_OK`][appdb.cli.EXIT_OK],
        [`EXIT_FAILURE`][appdb.cli.EXIT_FAILURE] or
        [`EXIT_APPROVAL`][appdb.cli.EXIT_APPROVAL].

    Raises:
        SystemExit: A usage error (code [`EXIT_USAGE`][appdb.cli.EXIT_USAGE], the
            message on stderr), or ``--help`` / ``--version`` (code 0), as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.migrations_default = not hasattr(args, "migrations")
    args.db = getattr(args, "db", DEFAULT_DB)
    args.migrations = getattr(args, "migrations", DEFAULT_MIGRATIONS)
    as_json = bool(getattr(args, "json", False))
    try:
        report: Report = args.handler(args)
    except UsageError as exc:
        parser.error(str(exc))
    except (Error, apsw.Error, OSError, ValueError) as exc:
        message = str(exc) if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
        if as_json:
            _emit(Report(EXIT_FAILURE, data={"error": message}), True, sys.stdout)
        print(f"appdb: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    _emit(report, as_json, sys.stdout)
    return report.code
