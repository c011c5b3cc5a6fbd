"""A read's shape as the door answers it: what the guard saw, and how it looks tables up.

The guard gives the tables a statement reads and whether its result may
change with no write; ``keyed_reads`` gives the tables SQLite reads only by
equality lookups on a key, and where each key value comes from. Both depend
on the SQL text alone (and the schema), so both are remembered per SQL; the
key values themselves are digested per request from its parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from service.db.door import KeyLookup
from service.db.sqlite.guard import StatementShape
from service.db.sqlite.keyed_reads import KeyedLookup
from service.values import Params


@dataclass(frozen=True)
class KeyedShape:
    """A read statement's tables, volatility and key lookups (the door's ``ReadShape``)."""

    shape: StatementShape
    lookups: Mapping[str, KeyedLookup]

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
