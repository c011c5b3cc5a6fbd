"""Where a keyed read's key values come from: a bound parameter or a literal, and the
digests of those values once a request's parameters are bound.

``keyed_reads`` finds, in a statement's program, the tables it reads only by key
lookups and the sources of each looked-up key (a ``KeyedLookup``); the sources
depend on the SQL text alone, so the lookup is remembered per SQL and digested
per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.db.sqlite.key_specs import KeySpec, Unknown
from service.values import Params, SqlValue


@dataclass(frozen=True)
class Param:
    """A bound parameter: its 1-based index in the statement, and its name as written
    (``:cust``, ``@x``, ``$y``, ``?3``), or None for a bare ``?``."""

    index: int
    name: str | None


@dataclass(frozen=True)
class Literal:
    """A value written in the statement's text."""

    value: SqlValue


Source = Param | Literal


class _Missing:
    """A parameter the request did not bind."""


_MISSING = _Missing()


@dataclass(frozen=True)
class KeyedLookup:
    """How a statement reads one table: only the rows whose ``spec`` columns equal one
    of ``values`` (one tuple of sources per looked-up key)."""

    spec: KeySpec
    values: tuple[tuple[Source, ...], ...]

    def digests(self, params: Params) -> tuple[str, ...] | None:
        """``spec.read_digest`` of each value tuple with ``params`` bound; None when a
        value is not reproduced exactly (``Unknown``) or a parameter is missing."""
        found: dict[str, None] = {}
        for sources in self.values:
            values: list[SqlValue] = []
            for source in sources:
                value = source.value if isinstance(source, Literal) else _bound(source, params)
                if isinstance(value, _Missing):
                    return None
                values.append(value)
            try:
                found[self.spec.read_digest(values)] = None
            except Unknown:
                return None
        return tuple(found)


def _bound(param: Param, params: Params) -> SqlValue | _Missing:
    """The value bound to ``param`` as Python's sqlite3 binds it: a dict by the name
    without its prefix character, a sequence by position."""
    if isinstance(params, dict):
        if param.name is None or param.name[1:] not in params:
            return _MISSING
        return params[param.name[1:]]
    if not 1 <= param.index <= len(params):
        return _MISSING
    return params[param.index - 1]
