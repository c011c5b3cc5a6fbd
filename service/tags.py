"""Cache tags: the names of what a cached read depends on and of what a write changed.

A read is tagged ``table:<database>.<table>`` for every table it reads (declared
names, as the engine saw them), ``database:<database>`` for each database it
ran on, the caller's own tags, and ``all``. A table the engine reads only by
equality lookups on a key is tagged instead by those keys,
``key:<database>.<table>.<columns>=<digest>`` one per looked-up value, and by
the table's key generation ``keys:<database>.<table>``. A committed write
bumps the table tags of every table it changed and the key tags of the old
and new key values of every row it changed; the key generation goes only
when the keys cannot say what changed (REPLACE, too many keys, Invalidate of
the table, a schema change). Bumping a tag makes every entry carrying it
unservable, so ``all`` and ``database:`` tags drop everything of their scope.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the db tier names its tags with these functions: no import cycle
    from service.db.door import KeyLookup, WriteOutcome

ALL_TAG = "all"  # every entry carries it, so Invalidate(all) is one bump


def table_tags(database: str, tables: Iterable[str]) -> list[str]:
    """The table tags of ``tables`` of ``database``, sorted."""
    return [f"table:{database}.{table}" for table in sorted(tables)]


def key_tags(database: str, table: str, columns: str, digests: Iterable[str]) -> list[str]:
    """The key tags of looked-up (or changed) key values of ``table``'s key ``columns``."""
    return [f"key:{database}.{table}.{columns}={digest}" for digest in digests]


def key_generation_tag(database: str, table: str) -> str:
    """The tag every keyed entry of ``table`` carries: bumped, it drops them all."""
    return f"keys:{database}.{table}"


def database_tag(database: str) -> str:
    """The tag every entry read from ``database`` carries."""
    return f"database:{database}"


def is_reserved(tag: str) -> bool:
    """Whether ``tag`` is one the service mints itself (a writer may bump only its own)."""
    return tag == ALL_TAG or tag.startswith(("table:", "database:", "key:", "keys:"))


def invalidated(tags: Sequence[str], databases: Sequence[str], everything: bool) -> list[str]:
    """What an Invalidate call bumps: a table's tag takes its keyed entries with it."""
    generations = ["keys:" + tag.removeprefix("table:") for tag in tags if tag.startswith("table:")]
    bumped = [
        *tags,
        *generations,
        *map(database_tag, databases),
        *([ALL_TAG] if everything else []),
    ]
    return list(dict.fromkeys(bumped))


def read_tags(database: str, reads: frozenset[str], keyed: Mapping[str, KeyLookup]) -> list[str]:
    """A read's tags on one database: its keys on the tables it looks up by key, the
    table tag of every other table it reads."""
    tags = table_tags(database, reads - keyed.keys())
    for table, lookup in sorted(keyed.items()):
        tags += key_tags(database, table, lookup.columns, lookup.digests)
        tags.append(key_generation_tag(database, table))
    return tags


def write_tags(database: str, outcome: WriteOutcome) -> list[str]:
    """What a committed write bumps on its database: the table tags of every table it
    changed, the key tags of every key value it changed, the key generations it spent."""
    tags = table_tags(database, outcome.tables)
    for table, columns, digest in sorted(outcome.keys):
        tags += key_tags(database, table, columns, (digest,))
    return tags + [key_generation_tag(database, t) for t in sorted(outcome.key_generations)]
