"""Cache keys: a hash of (databases, SQL text, typed parameters, shaping options).

The SQL is hashed exactly as sent: folding white space would also fold it
inside string literals and after ``--`` comments, making different
statements share a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from service.values import Params, SqlValue


class Keyed(Protocol):
    """What of a read decides its result."""

    @property
    def sql(self) -> str: ...

    @property
    def params(self) -> Params: ...

    @property
    def max_rows(self) -> int: ...

    @property
    def route_key(self) -> SqlValue: ...


def cache_key(databases: Sequence[str], request: Keyed, merge: object = None) -> str:
    """The key a read's result is cached under."""
    params = request.params
    items = sorted(params.items()) if isinstance(params, dict) else list(enumerate(params))
    typed = [(name, type(v).__name__, v) for name, v in items]
    material = repr((list(databases), request.sql, typed, request.max_rows, merge))
    return hashlib.sha256(material.encode()).hexdigest()
