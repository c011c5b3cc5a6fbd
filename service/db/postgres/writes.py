"""Write RPCs on PostgreSQL, each one transaction on a writer connection.

``BatchInsert`` goes through COPY: straight into the table (``ABORT``), or
into a temporary staging table and from there ``INSERT ... ON CONFLICT``
(``IGNORE``, ``UPSERT``), since COPY has no conflict clause. SQLite's
``REPLACE`` (delete every row any unique constraint conflicts with) has no
PostgreSQL equivalent and is refused. ``BatchUpdate`` runs each statement's
parameter sets in order; a statement must be DML on the served schema.

The idempotency record and the outbox row are written in the same transaction.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from service import errors
from service.db.door import Statements, WriteOutcome
from service.db.postgres.catalog import Catalog, TableInfo, quote
from service.db.postgres.session import Conn
from service.db.postgres.values import copy_text
from service.domain import InsertRequest
from service.values import SqlRow

IDEMPOTENCY_TABLE = "_dataaccess_idempotency"
OUTBOX_TABLE = "_dataaccess_outbox"
_STAGE = "_dataaccess_stage"
_ORDER = "_dataaccess_n"
EXPIRE_SLICE = 8


def create_tables(schema: str) -> str:
    """The DDL of the service's own tables in ``schema`` (idempotent)."""
    s = quote(schema)
    return f"""
CREATE TABLE IF NOT EXISTS {s}.{IDEMPOTENCY_TABLE} (key text PRIMARY KEY,
  fingerprint text NOT NULL, outcome jsonb NOT NULL, created_at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS {IDEMPOTENCY_TABLE}_created_at ON {s}.{IDEMPOTENCY_TABLE} (created_at);
CREATE TABLE IF NOT EXISTS {s}.{OUTBOX_TABLE} (id bigserial PRIMARY KEY, tags jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
"""


@dataclass(frozen=True)
class InsertPlan:
    """A checked BatchInsert."""

    table: str
    columns: tuple[str, ...]
    rows: Sequence[SqlRow]
    on_conflict: str
    conflict_columns: tuple[str, ...] = ()
    update_columns: tuple[str, ...] = ()


def plan_insert(
    request: InsertRequest, catalog: Catalog, allowed: frozenset[str] | None
) -> InsertPlan:
    """Check a BatchInsert against the catalog."""
    table = catalog.table(request.table)
    if table is None:
        raise errors.NotFound(f"no such table: {request.table}", field="table")
    if allowed is not None and table.name not in allowed and table.name.lower() not in allowed:
        raise errors.PermissionDenied(f"writes to table {table.name!r} are not allowed")
    if request.on_conflict == "replace":
        raise errors.InvalidArgument(
            "on_conflict REPLACE has no PostgreSQL equivalent (it deletes every row any "
            "unique constraint conflicts with): use UPSERT with conflict_columns",
            field="on_conflict",
        )
    if request.on_conflict not in ("abort", "ignore", "upsert"):
        raise errors.InvalidArgument(
            f"unknown on_conflict {request.on_conflict}", field="on_conflict"
        )
    columns = _columns(table, request.columns, "columns")
    if not columns:
        raise errors.InvalidArgument("columns: at least one column is needed", field="columns")
    for index, row in enumerate(request.rows):
        if len(row) != len(columns):
            raise errors.InvalidArgument(
                f"row has {len(row)} values for {len(columns)} columns", field=f"rows[{index}]"
            )
    conflict: tuple[str, ...] = ()
    update: tuple[str, ...] = ()
    if request.on_conflict == "upsert":
        conflict = _columns(table, request.conflict_columns, "conflict_columns")
        if not conflict:
            raise errors.InvalidArgument("UPSERT needs conflict_columns", field="conflict_columns")
        update = _columns(table, request.update_columns, "update_columns") or tuple(
            c for c in columns if c not in conflict
        )
    return InsertPlan(table.name, columns, request.rows, request.on_conflict, conflict, update)


def _columns(table: TableInfo, names: Sequence[str], field: str) -> tuple[str, ...]:
    found: list[str] = []
    for index, name in enumerate(names):
        column = table.column(name)
        if column is None:
            raise errors.NotFound(f"no such column: {table.name}.{name}", field=f"{field}[{index}]")
        if column in found:
            raise errors.InvalidArgument(f"column {name} given twice", field=f"{field}[{index}]")
        found.append(column)
    return tuple(found)


async def run_insert(connection: Conn, schema: str, plan: InsertPlan) -> int:
    """COPY the rows in; the rows inserted (or updated by an upsert)."""
    if not plan.rows:
        return 0
    if plan.on_conflict == "abort":
        await connection.copy_to_table(
            plan.table,
            source=io.BytesIO(copy_text(plan.rows)),
            columns=list(plan.columns),
            schema_name=schema,
            format="text",
        )
        return len(plan.rows)
    target = f"{quote(schema)}.{quote(plan.table)}"
    names = ", ".join(map(quote, plan.columns))
    stage = _STAGE
    # Dropped at COMMIT (and gone with a ROLLBACK): one per write transaction.
    await connection.execute(
        f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS"
        f" SELECT {names}, 0::bigint AS {_ORDER} FROM {target} WITH NO DATA"
    )
    numbered = [(*row, index) for index, row in enumerate(plan.rows)]
    await connection.copy_to_table(
        stage,
        source=io.BytesIO(copy_text(numbered)),
        columns=[*plan.columns, _ORDER],
        format="text",
    )
    if plan.on_conflict == "ignore":
        select = f"SELECT {names} FROM {stage} ORDER BY {_ORDER}"
        clause = "ON CONFLICT DO NOTHING"
    else:
        keys = ", ".join(map(quote, plan.conflict_columns))
        # The last row of a key wins, as one upsert per row in order would leave it.
        select = (
            f"SELECT {names} FROM (SELECT DISTINCT ON ({keys}) * FROM {stage}"
            f" ORDER BY {keys}, {_ORDER} DESC) AS latest ORDER BY {_ORDER}"
        )
        sets = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in plan.update_columns)
        action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
        clause = f"ON CONFLICT ({keys}) {action}"
    status = await connection.execute(f"INSERT INTO {target} ({names}) {select} {clause}")
    return _count(status)


async def run_statements(connection: Conn, statements: Statements) -> tuple[int, ...]:
    """Each statement once per parameter set, in order; rows affected per statement."""
    counts = []
    for index, (sql, param_sets) in enumerate(statements):
        try:
            prepared = await connection.prepare(sql)
        except asyncpg.PostgresError as exc:
            raise _located(exc, index) from exc
        total = 0
        for set_index, params in enumerate(param_sets or [()]):
            try:
                await prepared.fetch(*params)
            except (asyncpg.DataError, ValueError, TypeError) as exc:
                raise errors.InvalidArgument(
                    str(exc), field=f"statements[{index}].param_sets[{set_index}]"
                ) from exc
            total += _count(prepared.get_statusmsg())
        counts.append(total)
    return tuple(counts)


def _located(exc: asyncpg.PostgresError, index: int) -> Exception:
    state = str(getattr(exc, "sqlstate", ""))
    if state.startswith("42") and state not in ("42P01", "42703", "42883", "42501"):
        return errors.InvalidArgument(str(exc), field=f"statements[{index}].sql")
    return exc


def _count(status: str | None) -> int:
    """The row count of a command tag: ``INSERT 0 5`` -> 5, ``UPDATE 3`` -> 3."""
    parts = (status or "").split()
    return int(parts[-1]) if parts and parts[-1].isdigit() else 0


# Idempotency


def fingerprint(request: object) -> str:
    """What a request was, so a key reused for another request is refused."""
    return hashlib.sha256(repr(request).encode()).hexdigest()


async def replayed(
    connection: Conn, schema: str, key: str, print_: str, window: float
) -> tuple[WriteOutcome, list[str]] | None:
    """The stored outcome of ``key`` and the tags its write bumped, after waiting out a
    write holding the same key."""
    table = f"{quote(schema)}.{IDEMPOTENCY_TABLE}"
    # Two retries at once: the second waits for the first's COMMIT and replays it.
    await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", key)
    now = time.time()
    await connection.execute(
        f"DELETE FROM {table} WHERE key IN (SELECT key FROM {table} WHERE created_at < $1"
        f" ORDER BY created_at LIMIT {EXPIRE_SLICE})",
        now - window,
    )
    found = await connection.fetchrow(
        f"SELECT fingerprint, outcome FROM {table} WHERE key = $1 AND created_at >= $2",
        key,
        now - window,
    )
    if found is None:
        return None
    if found["fingerprint"] != print_:
        raise errors.InvalidArgument(
            "idempotency_key was used before for a different request", field="idempotency_key"
        )
    stored = json.loads(found["outcome"])
    outcome = WriteOutcome(
        tuple(stored["rows_affected"]),
        stored["last_insert_rowid"],
        frozenset(stored["tables"]),
        replayed=True,
    )
    return outcome, [str(tag) for tag in stored.get("tags", [])]


async def remember(
    connection: Conn,
    schema: str,
    key: str,
    print_: str,
    outcome: WriteOutcome,
    tags: list[str],
) -> None:
    """Store ``outcome`` and the tags it bumps under ``key`` in the open transaction: a
    retry answered from the record bumps them again (the first replica may have died
    between its COMMIT and its bump)."""
    stored = json.dumps(
        {
            "rows_affected": list(outcome.rows_affected),
            "last_insert_rowid": outcome.last_insert_rowid,
            "tables": sorted(outcome.tables),
            "tags": tags,
        }
    )
    await connection.execute(
        f"INSERT INTO {quote(schema)}.{IDEMPOTENCY_TABLE} (key, fingerprint, outcome, created_at)"
        " VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (key) DO UPDATE SET"
        " fingerprint = EXCLUDED.fingerprint, outcome = EXCLUDED.outcome,"
        " created_at = EXCLUDED.created_at",
        key,
        print_,
        stored,
        time.time(),
    )


async def undelivered(connection: Conn, schema: str) -> tuple[list[str], list[int]]:
    """The tags of every outbox row still there (a run that may not have bumped them),
    and the rows' ids."""
    tags: dict[str, None] = {}
    ids = []
    query = f"SELECT id, tags FROM {quote(schema)}.{OUTBOX_TABLE} ORDER BY id"
    for row in await connection.fetch(query):
        tags.update(dict.fromkeys(json.loads(row["tags"])))
        ids.append(row["id"])
    return list(tags), ids
