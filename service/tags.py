"""Cache tags: the names of what a cached read depends on and of what a write changed.

A read is tagged ``table:<database>.<table>`` for every table it reads (declared
names, as the engine saw them), ``database:<database>`` for each database it
ran on, the caller's own tags, and ``all``; a committed write bumps the table
tags of every table it changed. Bumping a tag makes every entry carrying it
unservable, so ``all`` and ``database:`` tags drop everything of their scope.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ALL_TAG = "all"  # every entry carries it, so Invalidate(all) is one bump


def table_tags(database: str, tables: Iterable[str]) -> list[str]:
    """The table tags of ``tables`` of ``database``, sorted."""
    return [f"table:{database}.{table}" for table in sorted(tables)]


def database_tag(database: str) -> str:
    """The tag every entry read from ``database`` carries."""
    return f"database:{database}"


def is_reserved(tag: str) -> bool:
    """Whether ``tag`` is one the service mints itself (a writer may bump only its own)."""
    return tag == ALL_TAG or tag.startswith(("table:", "database:"))


def invalidated(tags: Sequence[str], databases: Sequence[str], everything: bool) -> list[str]:
    """What an Invalidate call bumps."""
    return [*tags, *map(database_tag, databases), *([ALL_TAG] if everything else [])]
