"""Read shapes on PostgreSQL: what a statement reads and calls, learnt once per SQL text by
``PREPARE`` + ``EXPLAIN EXECUTE`` of its generic plan (PostgreSQL 15 cannot EXPLAIN a
statement with ``$n`` parameters directly), checked against the allowed tables and
the functions a read may call, and how it is cached.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from service import errors
from service.config import PostgresDatabaseConfig
from service.db.door import KeyLookup
from service.db.postgres.catalog import INTERNAL_PREFIX, KEY_TYPES, Catalog
from service.db.postgres.plans import PlanFacts, analyse, scan_expression
from service.db.postgres.session import Conn
from service.values import Params, SqlValue

# Functions a statement may not call: they reach outside the database (files,
# large objects, other servers), change what a pooled session carries (settings,
# roles, locks, listeners), or run SQL text whose tables no plan shows.
REFUSED_PREFIXES = (
    # the server's own state, not the database's tables: settings, locks, statistics
    "pg_show_",
    "pg_lock_status",
    "pg_stat_",
    "pg_prepared_",
    "pg_cursor",
    "pg_hba_",
    "pg_ident_",
    "pg_config",
    "pg_file_settings",
    "pg_backend_memory",
    "pg_get_backend",
    "pg_blocking_pids",
    "pg_safe_snapshot",
    # outside the database, or the session
    "dblink",
    "lo_",
    "pg_read_",
    "pg_ls_",
    "pg_advisory",
    "pg_try_advisory",
    "pg_stat_file",
    "pg_file_",
    "pg_terminate",
    "pg_cancel",
    "pg_reload",
    "pg_rotate",
    "pg_switch",
    "pg_create_",
    "pg_drop_",
    "pg_replication_",
    "pg_logical_",
    "pg_promote",
    "pg_import_",
    "pg_log_backend",
)
REFUSED_NAMES = frozenset(
    {
        "set_config",
        "pg_notify",
        "loread",
        "lowrite",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        "ts_stat",
        "pg_sleep_for",
        "pg_sleep_until",
        "txid_current",
        "pg_current_xact_id",
    }
)
_FIRST_USER_OID = 16384  # below: objects of the system catalogs (initdb)
_FUNCTIONS = """
SELECT proname, bool_or(provolatile <> 'i') AS varies, bool_or(oid >= $2) AS user_defined
FROM pg_proc WHERE proname = ANY($1::text[]) GROUP BY proname
"""
_SHAPE_STATEMENT = "_dataaccess_shape"
# Read each time a shape is learnt: an operator made since start counts too.
_USER_OPERATORS = "SELECT DISTINCT oprname FROM pg_operator WHERE oid >= $1"


# Date and time input that PostgreSQL turns into the moment it reads it: fixed when the
# statement is parsed (a literal) or bound (a parameter), so no plan shows a call.
_MOMENTS = frozenset({"now", "today", "tomorrow", "yesterday"})
_MOMENT_LITERAL = re.compile(r"'\s*(?:now|today|tomorrow|yesterday)\s*'", re.IGNORECASE)


def is_moment(text: str) -> bool:
    """Whether ``text`` means a moment relative to now for PostgreSQL's date/time input."""
    return text.strip().lower() in _MOMENTS


def names_a_moment(sql: str) -> bool:
    """Whether ``sql`` holds a literal such as ``'now'`` (an uncacheable read, if it is cast
    to a date or time; a text compared with 'now' is only not cached, never wrong)."""
    return bool(_MOMENT_LITERAL.search(sql))


def refused(name: str) -> bool:
    """Whether a read or write may not call the function ``name``."""
    return name in REFUSED_NAMES or name.startswith(REFUSED_PREFIXES)


def digest(values: tuple[str, ...]) -> str:
    """The digest of one key's values (as PostgreSQL prints them), the same on both sides."""
    encoded = json.dumps(list(values), ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.blake2b(encoded, digest_size=12).hexdigest()


@dataclass(frozen=True)
class KeyedScan:
    """A table read only through scans restricted to one key: its columns and, per
    column, the ``$n`` index or literal text its value comes from (one per scan)."""

    columns: tuple[str, ...]
    types: tuple[str, ...]  # "int" or "text", per column
    # per scan, per column: the parameters (indexes) or literals the column may equal
    sources: tuple[tuple[tuple[int | str, ...], ...], ...]


@dataclass(frozen=True)
class PgShape:
    """What one read statement reads, and how its result may be cached."""

    reads: frozenset[str]
    may_cache: bool
    keyed_scans: Mapping[str, KeyedScan]
    version: int
    catalog_version: list[int]  # shared cell: the catalog's version now
    # It calls a user-defined function: planned afresh each time, since one declared
    # IMMUTABLE is evaluated into the plan, and a cached plan would keep its old answer.
    replan: bool = False

    def cacheable(self, params: Params) -> bool:
        """Whether the result stays the same until a write (no volatile or hidden reads,
        no 'now' passed for a date or time)."""
        if not self.may_cache:
            return False
        values = params.values() if isinstance(params, dict) else params
        return not any(isinstance(v, str) and is_moment(v) for v in values)

    def keyed(self, params: Params) -> dict[str, KeyLookup]:
        """The tables read only by key lookups, with the digests of the keys looked up."""
        found = {}
        for table, scan in self.keyed_scans.items():
            digests = _digests(scan, params)
            if digests is not None:
                found[table] = KeyLookup(",".join(scan.columns), digests)
        return found

    def current(self) -> bool:
        """False once the schema (and so the keys the triggers report) changed."""
        return self.version == self.catalog_version[0]


def _digests(scan: KeyedScan, params: Params) -> tuple[str, ...] | None:
    if isinstance(params, dict):
        return None
    digests: set[str] = set()
    for per_column in scan.sources:
        texts = []
        for kind, alternatives in zip(scan.types, per_column, strict=True):
            column_texts = []
            for source in alternatives:
                text = source if isinstance(source, str) else _canonical(kind, params, source)
                if text is None:
                    return None
                column_texts.append(text)
            texts.append(column_texts)
        digests.update(digest(values) for values in itertools.product(*texts))
    return tuple(sorted(digests))


def _canonical(kind: str, params: tuple[SqlValue, ...], index: int) -> str | None:
    """A parameter as PostgreSQL prints the key column's value it selects; None when the
    service cannot be sure (then the table tag is used)."""
    if not 0 <= index < len(params):
        return None
    value = params[index]
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if kind == "text" and isinstance(value, str):
        return value
    return None


class ShapeMemo:
    """Shapes by SQL text, least recently used dropped first; emptied on schema change."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._shapes: OrderedDict[str, PgShape] = OrderedDict()

    def get(self, sql: str) -> PgShape | None:
        shape = self._shapes.get(sql)
        if shape is not None:
            self._shapes.move_to_end(sql)
        return shape

    def put(self, sql: str, shape: PgShape) -> None:
        self._shapes[sql] = shape
        self._shapes.move_to_end(sql)
        while len(self._shapes) > self._size:
            self._shapes.popitem(last=False)

    def clear(self) -> None:
        self._shapes.clear()


async def explain(connection: Conn, sql: str, param_count: int) -> PlanFacts:
    """The facts of ``sql``'s generic plan, inside the caller's transaction."""
    await connection.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    await connection.execute(f"PREPARE {_SHAPE_STATEMENT} AS {sql}")
    try:
        nulls = ", ".join(["NULL"] * param_count)
        call = f"{_SHAPE_STATEMENT}({nulls})" if param_count else _SHAPE_STATEMENT
        # In a savepoint: PREPARE outlives a failed transaction, DEALLOCATE must still run.
        await connection.execute("SAVEPOINT _dataaccess_explain")
        try:
            plan = await connection.fetchval(f"EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE {call}")
        except BaseException:
            await connection.execute("ROLLBACK TO SAVEPOINT _dataaccess_explain")
            raise
        await connection.execute("RELEASE SAVEPOINT _dataaccess_explain")
    finally:
        await connection.execute(f"DEALLOCATE {_SHAPE_STATEMENT}")
    return analyse(json.loads(plan) if isinstance(plan, str) else plan)


async def check_calls(connection: Conn, facts: PlanFacts, sql: str) -> tuple[bool, bool]:
    """Refuse calls a statement may not make; (any result-varying call, any user-defined
    function or operator hiding what it reads).

    The plan's calls are checked; so are the names called in the SQL itself, for a
    user-defined function the planner folded into a constant (an IMMUTABLE one).
    """
    for name in sorted(facts.calls):
        if refused(name):
            raise errors.PermissionDenied(f"function {name}() may not be called here")
    named = scan_expression(sql).calls
    rows = await connection.fetch(_FUNCTIONS, sorted(facts.calls | named), _FIRST_USER_OID)
    varies = facts.keyword_functions or facts.moments or any(row["varies"] for row in rows)
    hidden = any(row["user_defined"] for row in rows)
    operators = [row[0] for row in await connection.fetch(_USER_OPERATORS, _FIRST_USER_OID)]
    hidden = hidden or any(op in facts.text for op in operators)
    return varies, hidden


def check_relations(
    facts: PlanFacts, catalog: Catalog, allowed: frozenset[str] | None, database: str
) -> frozenset[str]:
    """The tables a statement reads, once each is one the database may serve."""
    tables = set()
    for schema, table in sorted(facts.relations):
        if schema != catalog.schema or table.startswith(INTERNAL_PREFIX):
            raise errors.PermissionDenied(f"{database}: access to {schema}.{table} is not allowed")
        if allowed is not None and table not in allowed and table.lower() not in allowed:
            raise errors.PermissionDenied(f"{database}: access to table {table!r} is not allowed")
        tables.add(table)
    return frozenset(tables)


def keyed_scans(facts: PlanFacts, catalog: Catalog) -> dict[str, KeyedScan]:
    """The tables every scan of which is restricted to one key the triggers report."""
    by_table: dict[str, list[Mapping[str, tuple[int | str, ...]]]] = {}
    for scan in facts.scans:
        by_table.setdefault(scan.table, []).append(scan.equal)
    found = {}
    for table, scans in by_table.items():
        info = catalog.tables.get(table)
        if info is None or not info.keys:
            continue
        columns = _common_key(info.keys, scans)
        if columns is None:
            continue
        types = tuple(KEY_TYPES.get(info.columns.get(c, ""), "") for c in columns)
        if "" in types:
            continue
        sources = tuple(tuple(equal[c] for c in columns) for equal in scans)
        found[table] = KeyedScan(columns, types, sources)
    return found


def _common_key(
    keys: tuple[tuple[str, ...], ...], scans: list[Mapping[str, tuple[int | str, ...]]]
) -> tuple[str, ...] | None:
    """The longest key every scan restricts to equal values."""
    covering = [key for key in keys if all(set(key) <= set(equal) for equal in scans)]
    return max(covering, key=len) if covering else None


async def check_write(
    connection: Conn, sql: str, catalog: Catalog, config: PostgresDatabaseConfig
) -> frozenset[str]:
    """Refuse a BatchUpdate statement that is not DML on allowed tables, or calls what no
    statement may; the tables it writes."""
    parameters = (await connection.prepare(sql)).get_parameters()
    facts = await explain(connection, sql, len(parameters))
    if facts.top_node != "ModifyTable":
        raise errors.InvalidArgument(
            "BatchUpdate takes INSERT, UPDATE, DELETE or upsert statements only", field="sql"
        )
    check_relations(facts, catalog, config.allowed_tables, config.name)
    await check_calls(connection, facts, "")
    return frozenset(facts.written)


async def learn(
    connection: Conn, sql: str, catalog: Catalog, config: PostgresDatabaseConfig, keys: bool
) -> PgShape:
    """The shape of read ``sql`` (in the caller's READ ONLY transaction), refused when it
    is no read, reads a table it may not, or calls what no read may."""
    # Parsed alone first: one statement, never several (PREPARE in explain is plain SQL).
    prepared = await connection.prepare(sql)
    if not prepared.get_attributes():
        raise errors.InvalidArgument("Query takes a statement that returns rows", field="sql")
    facts = await explain(connection, sql, len(prepared.get_parameters()))
    if facts.operation or facts.top_node == "ModifyTable":
        raise errors.PermissionDenied(f"{config.name}: a read may not write")
    reads = check_relations(facts, catalog, config.allowed_tables, config.name)
    varies, hidden = await check_calls(connection, facts, sql)
    untracked = bool(reads - catalog.tracked)
    may_cache = not (
        varies or hidden or untracked or facts.uncacheable_nodes or names_a_moment(sql)
    )
    keyed = keyed_scans(facts, catalog) if keys else {}
    return PgShape(reads, may_cache, keyed, 0, [0], replan=hidden)
