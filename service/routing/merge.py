"""Combining the results of a group's members: concatenate, merge by order, re-aggregate.

Members answer in parallel, each with rows already in the requested order;
Python's sort finds those ordered runs and merges them in about linear time,
which is the k-way merge without its bookkeeping. Partial aggregates are
combined by their group columns: SUM and COUNT add up, MIN and MAX compare.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from service import errors
from service.domain import MergeSpec
from service.values import SqlRow, SqlValue

AGGREGATES = ("sum", "count", "min", "max")


def merge_rows(
    columns: Sequence[str], parts: Sequence[Sequence[SqlRow]], spec: MergeSpec
) -> list[SqlRow]:
    """The members' rows combined as ``spec`` says."""
    rows = [row for part in parts for row in part]
    if spec.group_by or spec.aggregates:
        rows = _reaggregate(columns, rows, spec)
    if spec.order_by:
        _sort(columns, rows, _parse_order(columns, spec.order_by))
    return rows[: spec.limit] if spec.limit > 0 else rows


def _parse_order(columns: Sequence[str], order_by: str) -> list[tuple[int, bool]]:
    keys = []
    for term in order_by.split(","):
        words = term.split()
        if (
            not words
            or len(words) > 2
            or (len(words) == 2 and words[1].upper() not in ("ASC", "DESC"))
        ):
            raise errors.InvalidArgument(
                f"merge.order_by: expected 'column [ASC|DESC], ...', got {term.strip()!r}",
                field="merge.order_by",
            )
        keys.append(
            (
                _index(columns, words[0], "merge.order_by"),
                len(words) == 2 and words[1].upper() == "DESC",
            )
        )
    return keys


def _sort(columns: Sequence[str], rows: list[SqlRow], keys: list[tuple[int, bool]]) -> None:
    # Stable sorts from the last key to the first give the combined order.
    for index, descending in reversed(keys):
        rows.sort(key=functools.partial(_column_order, index), reverse=descending)


def _column_order(index: int, row: SqlRow) -> tuple[int, Any]:
    return _sqlite_order(row[index])


def _sqlite_order(value: SqlValue) -> tuple[int, Any]:
    """SQLite's ordering across storage classes: NULL, numbers, text, blobs."""
    if value is None:
        return (0, 0)
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, value)


def _reaggregate(columns: Sequence[str], rows: list[SqlRow], spec: MergeSpec) -> list[SqlRow]:
    group_at = [_index(columns, name, "merge.group_by") for name in spec.group_by]
    combine_at = {
        _index(columns, column, "merge.aggregates"): _function(function)
        for column, function in spec.aggregates
    }
    groups: dict[tuple[SqlValue, ...], list[SqlValue]] = {}
    for row in rows:
        key = tuple(row[i] for i in group_at)
        current = groups.get(key)
        if current is None:
            groups[key] = list(row)
            continue
        for index, function in combine_at.items():
            current[index] = _combine(function, current[index], row[index])
    return [tuple(values) for values in groups.values()]


def _combine(function: str, left: SqlValue, right: SqlValue) -> SqlValue:
    if left is None:
        return right
    if right is None:
        return left
    if function in ("sum", "count"):
        if isinstance(left, int | float) and isinstance(right, int | float):
            return left + right
        raise errors.InvalidArgument("SUM and COUNT combine numbers only", field="merge.aggregates")
    lower = _sqlite_order(right) < _sqlite_order(left)
    return (right if lower else left) if function == "min" else (left if lower else right)


def _function(name: str) -> str:
    if name not in AGGREGATES:
        raise errors.InvalidArgument(
            f"unknown aggregate function {name!r}", field="merge.aggregates"
        )
    return name


def _index(columns: Sequence[str], name: str, where: str) -> int:
    try:
        return list(columns).index(name)
    except ValueError:
        raise errors.InvalidArgument(
            f"{where}: {name!r} is not a result column ({', '.join(columns)})", field=where
        ) from None
