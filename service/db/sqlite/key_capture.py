"""The keys each write changed, as SQLite reports them: TEMP triggers on the writer connection.

A read SQLite answers by an equality lookup on a key is cached under digests
of the key values it looked up, so a committed write must name the old and
new key values of every row it inserted, updated or deleted, however the row
changed: the caller's statement, an upsert's DO UPDATE, a change of rowid, a
user trigger, a foreign-key action. Only SQLite knows all of those, and it
fires triggers for every one of them. So the writer connection gets TEMP
triggers (AFTER INSERT, UPDATE and DELETE on each keyed table of ``main``)
whose bodies hand the row's key columns, OLD and NEW, to a function
registered on that connection; when a job ends its rows become (table, key,
digest) triples. TEMP objects live in the connection alone: nothing is
written to the file, and no other process sees them.

What such triggers cannot see, and what is done instead:

- REPLACE conflict deletes fire no DELETE trigger while ``recursive_triggers``
  is off (and it stays off, or user triggers would recurse). A write that may
  REPLACE (its SQL says so, an outer REPLACE reaches into trigger bodies, a
  table declares ON CONFLICT REPLACE, a user trigger says REPLACE) bumps the
  key generation of every table it may have touched (``write_reach``). The
  foreign-key actions of such deletes do fire the child's triggers
  (measured), but the children are bumped too.
- Virtual tables take no triggers: they are left out of the catalog, so no
  read is ever keyed on one.
- Past ``max_keys_per_write`` keys of one table in one job the table's rows
  are no longer kept (memory stays bounded on a huge DELETE) and its key
  generation is bumped.

SQLite's pre-update hook would see REPLACE deletes too, but Python's sqlite3
does not expose it; apsw does, as a second copy of SQLite in the process,
which SQLite documents as a way to corrupt databases (each copy keeps its own
POSIX lock bookkeeping), so it is not used.

A function, not a TEMP table the triggers insert into: 1000 one-row inserts
took 3.6 ms with the function, 4.0 ms with the table (2.7 ms untracked); a
one-row insert 16.1 us against 20.2 us (15.0 us untracked), as the table
costs statements per job to read and empty; and the table keeps growing on
a huge DELETE where the function stops keeping rows at the cap. Everything
here runs on the writer's thread.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from service.db.door import KeyTracking, WriteOutcome
from service.db.sqlite.guard import KEY_FUNCTION, Guard
from service.db.sqlite.key_specs import EMPTY_CATALOG, KeyCatalog, KeySpec, read_key_catalog
from service.db.sqlite.schema import quote_identifier
from service.db.sqlite.write_reach import Reach, read_reach
from service.values import SqlValue

log = logging.getLogger(__name__)

TRIGGER_PREFIX = "_dataaccess_key_"
_CODECS = {"UTF-8": "utf-8", "UTF-16LE": "utf-16-le", "UTF-16BE": "utf-16-be"}
_MASK_BITS = 62  # key columns one text mask (an SQLite integer) can mark
Key = tuple[str, str, str]  # (declared table, key columns, digest), as WriteOutcome.keys
Row = tuple[SqlValue, ...]
# (trigger name suffix, event, row images handed over)
_EVENTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("insert", "INSERT", ("NEW",)),
    ("update", "UPDATE", ("OLD", "NEW")),
    ("delete", "DELETE", ("OLD",)),
)


@dataclass(frozen=True)
class _Watched:
    """One watched table: the columns its triggers hand over, and where each key's sit."""

    table: str  # declared name
    specs: tuple[tuple[KeySpec, tuple[int, ...]], ...]
    codec: str = "utf-8"  # how the database stores text, which comes over as bytes


@dataclass(frozen=True)
class _Installed:
    """The triggers in place: the catalog they serve, by trigger number, and the temp
    schema's version once they were made (a rollback that undid them changes it back)."""

    catalog: KeyCatalog
    watched: tuple[_Watched, ...]
    triggers: dict[str, str]  # trigger name -> lower-cased table, for the guard
    reach: Reach
    temp_version: int


_NOTHING = _Installed(EMPTY_CATALOG, (), {}, Reach({}, {}), -1)


class KeyCapture:
    """Watches the writer connection's changed keys, job by job.

    ``install`` once on the writer's thread; then per transaction
    ``check_schema`` right after BEGIN IMMEDIATE and ``committed`` after
    COMMIT, per job ``begin_job`` before its savepoint and ``finish_job``
    once it succeeded. ``catalog`` is the catalog the triggers serve; reads
    must be keyed by it alone (``on_catalog`` hears of a new one, on the
    writer's thread).
    """

    def __init__(
        self, tracking: KeyTracking, on_catalog: Callable[[KeyCatalog], None] | None = None
    ) -> None:
        self.tracking = tracking
        self._on_catalog = on_catalog
        self._guard: Guard | None = None
        self._installed = _NOTHING
        self._cap = max(tracking.max_keys_per_write, 0)
        self._rows: dict[int, set[Row]] = {}  # trigger number -> distinct rows of this job
        self._full: set[int] = set()  # trigger numbers past the cap in this job
        # Tables whose keyed reads may have been keyed by an older schema: bumped until a
        # transaction carrying the bump commits.
        self._stale: frozenset[str] = frozenset()
        self._stale_carried = False

    @property
    def catalog(self) -> KeyCatalog:
        """The key catalog of the tables watched now (empty when tracking is off)."""
        return self._installed.catalog

    def install(self, raw: sqlite3.Connection, guard: Guard) -> KeyCatalog:
        """Register the function and make the triggers; the catalog of the tables watched.

        Runs on the writer's thread, outside a transaction and past the guard
        (``run_trusted``). Tracking off: nothing is installed, the catalog is empty.
        """
        if not self.tracking.enabled:
            return EMPTY_CATALOG
        self._guard = guard
        raw.create_function(KEY_FUNCTION, -1, self._capture)
        raw.execute("BEGIN")  # the catalog and the triggers from one snapshot
        try:
            installed = _install(raw)
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        self._adopt(installed)
        return installed.catalog

    def check_schema(self, raw: sqlite3.Connection) -> bool:
        """After BEGIN IMMEDIATE, past the guard: whether the triggers had to be made again.

        Another process may have changed the schema (a table's keys changed,
        a trigger now names a missing column), or a rollback undid the last
        install. Then the catalog is read again, the triggers are replaced,
        and the outcomes bump the key generation of every table of the old
        and new catalog until one commits. True: the caller commits at once,
        so that no rollback of its jobs undoes the new triggers.
        """
        self._stale_carried = False
        if not self.tracking.enabled or self._guard is None:
            return False  # not installed: nothing watches, outcomes stay as they are
        main = int(raw.execute("PRAGMA main.schema_version").fetchone()[0])
        temp = int(raw.execute("PRAGMA temp.schema_version").fetchone()[0])
        installed = self._installed
        if main == installed.catalog.schema_version and temp == installed.temp_version:
            return False
        log.info("the schema changed (version %s): key capture triggers made again", main)
        fresh = _install(raw)
        self._stale |= _tables(installed.catalog) | _tables(fresh.catalog)
        self._adopt(fresh)
        if self._on_catalog is not None:
            self._on_catalog(fresh.catalog)
        return True

    def committed(self) -> None:
        """The transaction committed: a stale-schema bump it carried is delivered."""
        if self._stale_carried:
            self._stale = frozenset()
            self._stale_carried = False

    def begin_job(self) -> None:
        """A job starts: rows captured before it (a failed job's) are not its own."""
        self._rows.clear()
        self._full.clear()

    def finish_job(self, outcome: WriteOutcome, replaces: bool) -> WriteOutcome:
        """``outcome`` naming the keys its job changed, and the key generations to bump.

        ``replaces``: the job's SQL may resolve a conflict by REPLACE.
        """
        rows, full = self._rows, self._full
        self._rows, self._full = {}, set()
        if not self.tracking.enabled or outcome.replayed:
            return outcome
        installed = self._installed
        keys, generations = self._keys(installed, rows, full)
        reach = installed.reach
        risky = reach.replaced(outcome.tables)
        if replaces or risky:
            # Rows may have gone by REPLACE, which no trigger reports: every table the
            # write reached (as the guard saw it, and as the schema says it may) drops
            # its keyed reads.
            generations |= reach.of(outcome.tables) | risky | outcome.tables
        if self._stale:
            generations |= self._stale | reach.of(outcome.tables)
            self._stale_carried = True
        if not keys and not generations:
            return outcome
        return WriteOutcome(  # not dataclasses.replace: this runs once per write job
            rows_affected=outcome.rows_affected,
            last_insert_rowid=outcome.last_insert_rowid,
            tables=outcome.tables,
            replayed=outcome.replayed,
            keys=outcome.keys | keys,
            key_generations=outcome.key_generations | generations,
        )

    def _keys(
        self, installed: _Installed, rows: dict[int, set[Row]], full: set[int]
    ) -> tuple[frozenset[Key], set[str]]:
        """The keys of the captured rows, and the tables that had too many of them."""
        keys: set[Key] = set()
        generations = {installed.watched[n].table for n in full if n < len(installed.watched)}
        for number, captured in rows.items():
            if number >= len(installed.watched):
                continue  # never expected: installs happen between jobs, never inside one
            watched = installed.watched[number]
            found = _keys_of(watched, captured, self._cap)
            if found is None:
                generations.add(watched.table)
            else:
                keys |= found
        return frozenset(keys), generations

    def _capture(self, number: int, *values: SqlValue) -> None:
        """Called by the triggers for every row image: kept until the job ends."""
        # Runs once per changed row and image: kept as short as it can be.
        rows = self._rows.get(number)
        if rows is None:
            if number in self._full:
                return
            rows = self._rows[number] = set()
        rows.add(values)
        if len(rows) > self._cap:
            del self._rows[number]
            self._full.add(number)

    def _adopt(self, installed: _Installed) -> None:
        self._installed = installed
        if self._guard is not None:
            self._guard.key_triggers = installed.triggers


def _keys_of(watched: _Watched, rows: set[Row], cap: int) -> frozenset[Key] | None:
    """Every key of ``rows``; None past ``cap`` of them."""
    keys: set[Key] = set()
    table = watched.table
    rows = {_texts(row, watched.codec) for row in rows}
    for spec, positions in watched.specs:
        name, digest = spec.name, spec.stored_digest
        values: set[Row]
        if len(positions) == 1:
            at = positions[0]
            values = {(row[at],) for row in rows}
        else:
            values = {tuple([row[i] for i in positions]) for row in rows}
        keys.update([(table, name, digest(v)) for v in values])
        if len(keys) > cap:
            return None
    return frozenset(keys)


def _texts(row: Row, codec: str) -> Row:
    """A captured row image as the values it holds: its text came over as bytes.

    The triggers hand text over as a BLOB (and a mask saying which values were
    text): Python cannot take text that is not valid UTF-8 as an argument, and
    such a row, written by another process, must not make writes to it fail.
    Valid text decodes to the very string a read binds; invalid bytes to one no
    read can bind (SQLite compares their bytes, which no valid string shares).
    """
    mask, values = row[0], row[1:]
    if not mask:
        return values
    assert isinstance(mask, int)
    return tuple(
        bytes(v).decode(codec, "surrogateescape")  # type: ignore[arg-type]
        if mask >> i & 1
        else v
        for i, v in enumerate(values)
    )


def _tables(catalog: KeyCatalog) -> frozenset[str]:
    return frozenset(keys.table for keys in catalog.tables.values())


# Installing, inside a transaction on the writer's thread, past the guard.


def _install(raw: sqlite3.Connection) -> _Installed:
    """Drop the triggers of an earlier install, read the catalog, make the triggers."""
    _drop_triggers(raw)
    catalog = read_key_catalog(raw)
    limit = raw.getlimit(sqlite3.SQLITE_LIMIT_FUNCTION_ARG)
    codec = _CODECS[str(raw.execute("PRAGMA encoding").fetchone()[0]).upper()]
    watched: list[_Watched] = []
    triggers: dict[str, str] = {}
    for keys in catalog.tables.values():
        number = len(watched)
        columns = _columns(keys.specs)
        if len(columns) + 2 > limit or len(columns) > _MASK_BITS:
            log.warning("keys of table %s cannot be watched: too many key columns", keys.table)
            continue
        made = _make_triggers(raw, number, keys.table, columns) if columns else []
        if not made:
            continue
        triggers.update(dict.fromkeys(made, keys.table.lower()))
        positions = {c: i for i, c in enumerate(columns)}
        specs = tuple((s, tuple(positions[c] for c in s.columns)) for s in keys.specs)
        watched.append(_Watched(keys.table, specs, codec))
    names = {w.table.lower() for w in watched}
    restricted = KeyCatalog(
        {name: keys for name, keys in catalog.tables.items() if name in names},
        {root: at for root, at in catalog.roots.items() if at[0].lower() in names},
        catalog.schema_version,
    )
    temp_version = int(raw.execute("PRAGMA temp.schema_version").fetchone()[0])
    return _Installed(restricted, tuple(watched), triggers, read_reach(raw), temp_version)


def _drop_triggers(raw: sqlite3.Connection) -> None:
    # Listed from the temp schema itself: a trigger on a table another process dropped
    # stays there, and would come back to life on a new table of that name.
    found = raw.execute(
        "SELECT name FROM sqlite_temp_schema WHERE type = 'trigger' AND name GLOB ?",
        (TRIGGER_PREFIX + "*",),
    ).fetchall()
    for (name,) in found:
        raw.execute(f"DROP TRIGGER IF EXISTS temp.{quote_identifier(str(name))}")


def _columns(specs: Iterable[KeySpec]) -> tuple[str, ...]:
    """Every column some key of the table uses, in a fixed order."""
    return tuple(dict.fromkeys(c for spec in specs for c in spec.columns))


def _make_triggers(
    raw: sqlite3.Connection, number: int, table: str, columns: tuple[str, ...]
) -> list[str]:
    """The three triggers on ``table``; none (and a warning) when SQLite refuses one."""
    made: list[str] = []
    raw.execute("SAVEPOINT key_triggers")
    try:
        for suffix, event, images in _EVENTS:
            name = f"{TRIGGER_PREFIX}{number}_{suffix}"
            calls = ", ".join(_call(number, image, columns) for image in images)
            raw.execute(
                f"CREATE TEMP TRIGGER {quote_identifier(name)} AFTER {event}"
                f" ON main.{quote_identifier(table)} BEGIN SELECT {calls}; END"
            )
            made.append(name)
    except sqlite3.Error as exc:
        # Its reads fall back to the table tag: it is left out of the catalog.
        log.warning("keys of table %s cannot be watched: %s", table, exc)
        raw.execute("ROLLBACK TO key_triggers")
        made = []
    raw.execute("RELEASE key_triggers")
    return made


def _call(number: int, image: str, columns: tuple[str, ...]) -> str:
    """The call handing one row image over: a mask of its text values, then the values,
    text as a BLOB of its bytes (see ``_texts``)."""
    named = [f"{image}.{quote_identifier(c)}" for c in columns]
    mask = " + ".join(f"((typeof({v}) = 'text') << {i})" for i, v in enumerate(named))
    values = ", ".join(
        f"CASE WHEN typeof({v}) = 'text' THEN CAST({v} AS BLOB) ELSE {v} END" for v in named
    )
    return f"{KEY_FUNCTION}({number}, {mask}, {values})"
