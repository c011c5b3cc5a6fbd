"""What a SQLite database looks like now: its file, a probe query, its settings, its disk.

The findings feed Health: the file present and still the one opened (read
through SQLite only), a timed probe query on a reader, ``foreign_keys`` on,
WAL mode, the indexes its migrations create, the free disk space beside
it, and, when asked deeply, ``PRAGMA quick_check`` and ``PRAGMA foreign_key_check``.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from service.db.door import Finding, Severity

_INDEX = re.compile(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?[\"`\[]?(\w+)", re.I)
_LOW_DISK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Looked:
    """What the probe query on a reader found."""

    foreign_keys: bool
    journal_mode: str
    indexes: set[str]
    quick_check: str = ""
    check_ms: float = 0.0
    orphans: dict[tuple[str, str], int] | None = None  # (table, parent): rows; deep only
    orphans_ms: float = 0.0


def look(raw: sqlite3.Connection, deep: bool) -> Looked:
    """Run the probe query and read the settings (and ``quick_check`` when ``deep``)."""
    raw.execute("SELECT 1").fetchall()
    foreign = bool(raw.execute("PRAGMA foreign_keys").fetchone()[0])
    mode = str(raw.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    rows = raw.execute("SELECT name FROM sqlite_schema WHERE type = 'index'").fetchall()
    indexes = {str(row[0]) for row in rows}
    if not deep:
        return Looked(foreign, mode, indexes)
    started = time.monotonic()
    verdict = "; ".join(str(row[0]) for row in raw.execute("PRAGMA quick_check").fetchall())
    check_ms = ms_since(started)
    started = time.monotonic()
    orphans = foreign_key_orphans(raw)
    return Looked(foreign, mode, indexes, verdict, check_ms, orphans, ms_since(started))


def foreign_key_orphans(raw: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """Rows whose foreign key names no parent row (written with foreign_keys off), counted
    by (table, parent) as ``PRAGMA foreign_key_check`` finds them, row by row."""
    orphans: dict[tuple[str, str], int] = {}
    for table, _rowid, parent, _fk in raw.execute("PRAGMA foreign_key_check"):
        key = (str(table), str(parent))
        orphans[key] = orphans.get(key, 0) + 1
    return orphans


def findings(looked: Looked, expected_indexes: set[str], deep: bool) -> list[Finding]:
    """The settings, index and (when ``deep``) integrity findings of one probe."""
    foreign = Severity.HEALTHY if looked.foreign_keys else Severity.DEGRADED
    wal = Severity.HEALTHY if looked.journal_mode == "wal" else Severity.DEGRADED
    found = [
        Finding("foreign_keys", foreign, f"foreign_keys={int(looked.foreign_keys)}"),
        Finding("wal", wal, f"journal_mode={looked.journal_mode}"),
        _indexes(expected_indexes, looked.indexes),
    ]
    if deep:
        ok = Severity.HEALTHY if looked.quick_check == "ok" else Severity.CRITICAL
        found.append(Finding("quick_check", ok, looked.quick_check, looked.check_ms))
        found.append(_orphans(looked.orphans or {}, looked.orphans_ms))
    return found


def _orphans(orphans: dict[tuple[str, str], int], duration_ms: float) -> Finding:
    """Orphaned rows degrade the database (they are data to repair, not a broken file)."""
    if not orphans:
        return Finding("foreign_key_check", Severity.HEALTHY, "no orphaned rows", duration_ms)
    found = ", ".join(
        f"{table}: {count} rows without their {parent} row"
        for (table, parent), count in sorted(orphans.items())
    )
    return Finding("foreign_key_check", Severity.DEGRADED, f"orphaned rows: {found}", duration_ms)


def _indexes(expected: set[str], present: set[str]) -> Finding:
    missing = sorted(expected - present)
    if missing:
        return Finding("indexes", Severity.DEGRADED, f"missing: {', '.join(missing)}")
    return Finding("indexes", Severity.HEALTHY, f"all {len(expected)} expected indexes present")


def unreadable(path: Path, identity: tuple[int, int] | None) -> str:
    """Why ``path`` cannot serve as a database file, or '' when it can.

    The file is opened through SQLite only: closing a descriptor that anything
    else opened on it would drop every POSIX lock this process holds there, and
    another process could then delete the live WAL under our connections.
    SQLite keeps such descriptors open until its last connection to the file goes.
    A file swapped in under the open one would read its first page from the live
    WAL and look sound, so the path must still name the file that was opened.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if identity is not None and (stat.st_dev, stat.st_ino) != identity:
        return f"{path} is not the SQLite database the service opened: it was replaced or moved"
    try:
        probe = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"cannot read {path}: {exc}"
    try:
        probe.execute("SELECT count(*) FROM sqlite_schema").fetchall()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            return f"{path} is not a SQLite database: {exc}"
        return f"cannot read {path}: {exc}"
    finally:
        probe.close()
    return ""


def disk(path: Path) -> Finding:
    """The free space on the file system that holds ``path``."""
    started = time.monotonic()
    usage = shutil.disk_usage(path.parent)
    share = usage.free / usage.total if usage.total else 0.0
    message = f"{usage.free / 2**30:.1f} GiB free ({share:.0%})"
    if share < 0.01:
        severity = Severity.CRITICAL
    elif share < 0.05 or usage.free < _LOW_DISK_BYTES:
        severity = Severity.DEGRADED
    else:
        severity = Severity.HEALTHY
    return Finding("disk", severity, message, ms_since(started))


def expected_indexes(migrations: Path | None) -> set[str]:
    """The indexes a database's migrations create."""
    if migrations is None or not migrations.is_dir():
        return set()
    names: set[str] = set()
    for script in sorted(migrations.glob("*.sql")):
        names.update(_INDEX.findall(script.read_text(encoding="utf-8")))
    return names


def ms_since(started: float) -> float:
    """Milliseconds since ``started`` (monotonic)."""
    return (time.monotonic() - started) * 1000
