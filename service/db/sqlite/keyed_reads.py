"""Which tables a read looks up only by key, as SQLite's own program for it shows.

A cached read is tagged with every table it reads, so any write to the table
drops it. When a statement reads a table only through equality lookups on a
key (the rowid, or a prefix of an index) whose values come from its
parameters or literals, its result depends only on the rows with those key
values, and it can be tagged by digests of them instead (``KeySpec``).

SQLite decides how a statement reads each table, so the answer is read from
its program (``EXPLAIN``) and checked against its plan (``EXPLAIN QUERY
PLAN``). Neither is a stable interface: only the shapes that
``tests/db/test_keyed_reads.py`` pins are trusted, and anything else (an
opcode ``bytecode`` does not list, a cursor used in a way not recognised, a key value
computed rather than bound) leaves the table unkeyed, to fall back to its
table tag. A missed lookup costs hit rate; a wrong one would serve stale rows.

What makes a table keyed (every cursor on it must fit; see ``key_seeks``):

* Rowid: one table cursor, positioned only by ``SeekRowid``/``NotExists``.
* Index (or a WITHOUT ROWID table's primary key): one index cursor, positioned
  only by one ``SeekGE`` (``SeekLE``) immediately followed by ``IdxGT``
  (``IdxLT``) on the same key registers, the loop's ``Next`` (``Prev``)
  returning to that bound: together they visit exactly the entries equal to
  the key. A table cursor beside it may only follow the index's entry
  (``DeferredSeek``, or ``NotFound`` on the index's primary-key columns for
  WITHOUT ROWID).
* Key registers: written only by ``Variable`` or a literal (or copies of
  one), or read from an IN list's ephemeral table filled only with such
  values. Parameters and literals do not change while the statement runs, so
  a key written once holds the same value at the seek and at every bound check.
* Affinity: SQLite may convert a key before the seek; any conversion it
  applies must be the column's own (what ``KeySpec.read_digest`` applies).
  Stored values already carry the column's affinity, so a conversion
  SQLite skips can only make the seek find fewer rows, never other ones.
* Collation: the spec's must be the index's, as the cursor's key info shows it;
  the columns are the ones the plan line names for that index.

Nothing is keyed in a program prepared against another schema version than the
catalog's (its root pages would name other tables), nor in one that reads a
virtual table (which may read any table through statements of its own).

This module is the entry point (``keyed_lookups``) and names the public types;
the work is done by ``bytecode`` (the program as a model), ``key_seeks`` (the
cursors' shapes, against the plan), ``key_origins`` (the key registers' values)
and ``key_sources`` (the values' sources and their digests).
"""

from __future__ import annotations

import sqlite3

from service.db.sqlite.bytecode import Op, Program, Unsupported
from service.db.sqlite.key_origins import MAX_KEYS
from service.db.sqlite.key_seeks import Analysis
from service.db.sqlite.key_sources import KeyedLookup, Literal, Param, Source
from service.db.sqlite.key_specs import KeyCatalog
from service.values import Params

__all__ = ["MAX_KEYS", "KeyedLookup", "Literal", "Param", "Source", "keyed_lookups"]


def keyed_lookups(
    raw: sqlite3.Connection, sql: str, params: Params, catalog: KeyCatalog
) -> dict[str, KeyedLookup]:
    """Declared table name -> its keyed lookup, for each table the statement reads only
    through key lookups.

    Runs on the reader's thread after ``sql`` was prepared under the guard (which lets
    ``EXPLAIN`` pass). ``params`` only prepare it: the answer depends on the SQL text and
    the schema alone. Any doubt, including SQLite refusing the statement, keys nothing.
    """
    try:
        rows = raw.execute(f"EXPLAIN {sql}", params).fetchall()
        plan = [str(row[3]) for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        program = Program([Op.of(row) for row in rows], sql)
    except (sqlite3.Error, Unsupported, ValueError):
        return {}
    if program.schema_cookie() != catalog.schema_version or program.has_virtual_tables():
        return {}  # a stale catalog names pages wrongly; a virtual table reads what it likes
    found: dict[str, KeyedLookup] = {}
    for table, cursors in program.cursors_by_table(catalog).items():
        keys = catalog.keys_of(table)
        if keys is None:
            continue
        try:
            lookup = Analysis(raw, program, plan, keys, cursors).lookup()
        except (sqlite3.Error, Unsupported, ValueError):
            lookup = None
        if lookup is not None:
            found[keys.table] = lookup
    return found
