"""A read's shape as the door answers it: what the guard saw, and how it looks tables up.

The guard gives the tables a statement reads and whether its result may
change with no write; ``keyed_reads`` gives the tables SQLite reads only by
equality lookups on a key, and where each key value comes from. Both depend
on the SQL text alone (and the schema), so both are remembered per SQL
(``ReadShapes`` learns them on a reader); the key values themselves are
digested per request from its parameters.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from service.db.door import KeyLookup
from service.db.sqlite.guard import Guard, ShapeMemo, StatementShape
from service.db.sqlite.key_specs import EMPTY_CATALOG, KeyCatalog
from service.db.sqlite.keyed_reads import KeyedLookup, keyed_lookups
from service.db.sqlite.pool import ReaderPool
from service.values import Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyedShape:
    """A read statement's tables, volatility and key lookups (the door's ``ReadShape``)."""

    shape: StatementShape
    lookups: Mapping[str, KeyedLookup]
    catalog: KeyCatalog = EMPTY_CATALOG  # the catalog the lookups were learnt under
    shapes: ReadShapes | None = None

    def current(self) -> bool:
        """Whether the lookups still follow the writer's key catalog (always, with none)."""
        return not self.lookups or self.shapes is None or self.shapes.catalog is self.catalog

    @property
    def reads(self) -> frozenset[str]:
        """The declared names of the tables the statement reads."""
        return self.shape.reads

    def cacheable(self, params: Params) -> bool:
        """Whether the result, with ``params`` bound, stays the same until a write."""
        return self.shape.cacheable(params)

    def keyed(self, params: Params) -> dict[str, KeyLookup]:
        """The tables looked up only by key, with the digests of ``params``' key values;
        a table whose values cannot be normalised exactly is left out (table-tagged)."""
        found = {}
        for table, lookup in self.lookups.items():
            digests = lookup.digests(params)
            if digests is not None and table in self.shape.reads:
                found[table] = KeyLookup(lookup.spec.name, tuple(dict.fromkeys(digests)))
        return found


class LookupMemo:
    """Key lookups by SQL text, bounded, for one database at one schema version."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._lookups: OrderedDict[str, Mapping[str, KeyedLookup]] = OrderedDict()
        self._capacity = capacity

    def get(self, sql: str) -> Mapping[str, KeyedLookup] | None:
        """The lookups remembered for ``sql``, if any."""
        found = self._lookups.get(sql)
        if found is not None:
            self._lookups.move_to_end(sql)
        return found

    def put(self, sql: str, lookups: Mapping[str, KeyedLookup]) -> None:
        """Remember the lookups of ``sql``."""
        self._lookups[sql] = lookups
        self._lookups.move_to_end(sql)
        while len(self._lookups) > self._capacity:
            self._lookups.popitem(last=False)

    def clear(self) -> None:
        """Forget everything: the schema changed."""
        self._lookups.clear()


class ReadShapes:
    """The shapes of one database's reads: remembered per SQL, or learnt on a reader by
    preparing the statement under EXPLAIN; keyed only by the writer's key catalog."""

    def __init__(self, database: str, memo: ShapeMemo, pool: ReaderPool) -> None:
        self._name = database
        self._read_memo = memo
        self._pool = pool
        self._catalog = EMPTY_CATALOG  # read when the writer opens
        self._lookups = LookupMemo()

    @property
    def catalog(self) -> KeyCatalog:
        """The key catalog reads are keyed by now."""
        return self._catalog

    def use_catalog(self, catalog: KeyCatalog) -> None:
        """Key reads by ``catalog`` from now on: the one the writer's triggers serve, as
        they were installed or, on the writer's thread, made again."""
        # Made again before the COMMIT that bumps the old catalog's keyed reads: lookups
        # learnt under the old one are never used again.
        self._lookups = LookupMemo()
        self._catalog = catalog

    async def read_shape(self, sql: str, params: Params, deadline: float) -> KeyedShape | None:
        """The tables ``sql`` reads and how it looks them up: remembered, or learnt by
        preparing it under EXPLAIN."""
        # The catalog first: use_catalog replaces the memo first, so lookups taken here
        # are never newer than the catalog they are checked against (current()).
        catalog = self._catalog
        memo = self._lookups  # replaced whole when the catalog changes
        known, lookups = self._read_memo.get(sql), memo.get(sql)
        if known is not None and lookups is not None:
            return KeyedShape(known, lookups, catalog, self)

        def explain(raw: sqlite3.Connection, guard: Guard) -> KeyedShape | None:
            guard.begin(sql)
            raw.execute(f"EXPLAIN {sql}", params).close()
            shape = guard.shape_of(sql)
            if shape is None:
                return None
            lookups = self._lookups_of(raw, guard, sql, params, catalog)
            return KeyedShape(shape, lookups, catalog, self)

        async with self._pool.reader(deadline) as conn:
            found = await conn.run(lambda raw: explain(raw, conn.guard), deadline, field="sql")
        if found is None or self._catalog is catalog:
            if found is not None:
                memo.put(sql, found.lookups)
            return found
        return KeyedShape(found.shape, {})  # learnt from an older schema: table tags

    def _lookups_of(
        self, raw: sqlite3.Connection, guard: Guard, sql: str, params: Params, catalog: KeyCatalog
    ) -> dict[str, KeyedLookup]:
        """The tables ``sql`` reads only by key, on a reader whose schema is the catalog's."""
        if not catalog.tables:
            return {}
        guard.trusted = True  # a PRAGMA, which callers' statements may not use
        try:
            version = int(raw.execute("PRAGMA schema_version").fetchone()[0])
        finally:
            guard.trusted = False
        if version != catalog.schema_version:
            return {}  # the writer has not seen this schema yet: table tags until it has
        try:
            return keyed_lookups(raw, sql, params, catalog)
        except Exception:  # an unknown program shape must cost a keyed read, never the read
            log.exception("key analysis of a read on %s failed; table tags used", self._name)
            return {}
