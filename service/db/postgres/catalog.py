"""What the service knows of a PostgreSQL schema: its tables, their columns, and the keys
the capture triggers report; and installing those triggers.

Every table of the served schema gets three statement-level AFTER triggers (one per
event: PostgreSQL 15 refuses transition tables on a multi-event trigger) and one
for TRUNCATE. They hand the writing transaction what it changed through a
transaction-local setting, ``dataaccess.changed``: one JSON line per statement,
``{"t": table, "k": {"customer": [["7"], ...]}}`` with the old and new key values
(as text) of every changed row, or ``"k": null`` when they are too many. Writers
that are not this service (``dataaccess.writer`` unset) get a ``pg_notify`` on
``dataaccess_changes`` instead, so cached reads of the table go there too.

The keys a table reports are the trigger's arguments, read back from
``pg_trigger``: a read is keyed on a table only by keys its triggers report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from service.db.postgres.session import Conn

INTERNAL_PREFIX = "_dataaccess_"
CHANNEL = "dataaccess_changes"
CHANGED_SETTING = "dataaccess.changed"
WRITER_SETTING = "dataaccess.writer"
_TRIGGER_PREFIX = "_dataaccess_capture_"
_EVENTS = ("insert", "update", "delete")
KEY_TYPES = {"int2": "int", "int4": "int", "int8": "int", "text": "text", "varchar": "text"}

CAPTURE_FUNCTION = r"""
CREATE OR REPLACE FUNCTION {schema}._dataaccess_capture() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
  max_keys integer := TG_ARGV[0]::integer;
  spec text;
  cols text[];
  tuple_sql text;
  sources text[];
  src text;
  found jsonb;
  present boolean;
  keys jsonb := '{{}}'::jsonb;
  over boolean := false;
  line text;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    line := json_build_object('t', TG_TABLE_NAME, 'k', NULL)::text;
  ELSE
    sources := CASE TG_OP WHEN 'INSERT' THEN ARRAY['new_rows'] WHEN 'DELETE' THEN ARRAY['old_rows']
               ELSE ARRAY['old_rows', 'new_rows'] END;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM ' || sources[1] || ')' INTO present;
    IF NOT present THEN
      RETURN NULL;
    END IF;
    FOREACH spec IN ARRAY TG_ARGV[1:] LOOP
      EXIT WHEN over;
      cols := string_to_array(spec, ',');
      SELECT string_agg(format('%I::text', c), ', ') INTO tuple_sql FROM unnest(cols) AS c;
      EXECUTE 'SELECT jsonb_agg(k) FROM (SELECT DISTINCT jsonb_build_array(' || tuple_sql
        || ') AS k FROM (' || (SELECT string_agg('SELECT * FROM ' || s, ' UNION ALL ')
                              FROM unnest(sources) AS s)
        || ') AS changed LIMIT ' || (max_keys + 1) || ') AS distinct_keys' INTO found;
      IF jsonb_array_length(coalesce(found, '[]'::jsonb)) > max_keys THEN
        over := true;
      ELSE
        keys := keys || jsonb_build_object(spec, coalesce(found, '[]'::jsonb));
      END IF;
    END LOOP;
    line := json_build_object('t', TG_TABLE_NAME,
                              'k', CASE WHEN over THEN NULL ELSE keys END)::text;
  END IF;
  IF current_setting('{writer}', true) = 'on' THEN
    PERFORM set_config('{changed}',
      coalesce(current_setting('{changed}', true), '') || line || E'\n', true);
  ELSE
    PERFORM pg_notify('{channel}', json_build_object('t', TG_TABLE_NAME)::text);
  END IF;
  RETURN NULL;
END
$body$
"""


@dataclass(frozen=True)
class TableInfo:
    """One table: its columns (name -> type name) in order, and the keys its triggers report."""

    name: str
    columns: dict[str, str]
    keys: tuple[tuple[str, ...], ...] = ()  # key column lists, as the triggers report them

    def column(self, name: str) -> str | None:
        """The column's declared name (exact, else the one case-folded match)."""
        if name in self.columns:
            return name
        folded = [c for c in self.columns if c.lower() == name.lower()]
        return folded[0] if len(folded) == 1 else None


@dataclass
class Catalog:
    """The served schema's tables, by name."""

    schema: str
    tables: dict[str, TableInfo] = field(default_factory=dict)
    fingerprint: str = ""
    tracked: frozenset[str] = frozenset()  # tables whose capture triggers are installed
    descendants: dict[str, frozenset[str]] = field(default_factory=dict)

    def with_descendants(self, tables: frozenset[str]) -> frozenset[str]:
        """``tables`` and every table that inherits from one of them."""
        found = set(tables)
        for table in tables:
            found |= self.descendants.get(table, frozenset())
        return frozenset(found)

    def table(self, name: str) -> TableInfo | None:
        """The table called ``name`` (exact, else the one case-folded match)."""
        if name in self.tables:
            return self.tables[name]
        folded = [t for t in self.tables.values() if t.name.lower() == name.lower()]
        return folded[0] if len(folded) == 1 else None

    @property
    def names(self) -> frozenset[str]:
        """Every table's name."""
        return frozenset(self.tables)


_TABLES = """
SELECT c.relname, a.attname, format_type(a.atttypid, NULL) AS type, t.typname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND c.relname NOT LIKE '\\_dataaccess\\_%' AND c.relname <> 'schema_migrations'
ORDER BY c.relname, a.attnum
"""
_TRIGGERS = 4  # insert, update, delete, truncate
_INSTALLED = """
SELECT c.relname, t.tgargs
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND t.tgname LIKE '\\_dataaccess\\_capture\\_%'
"""
_TRIGGER_ARGS = """
SELECT c.relname, t.tgargs
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND t.tgname = '_dataaccess_capture_insert'
  AND (SELECT count(*) FROM pg_trigger x WHERE x.tgrelid = t.tgrelid AND x.tgenabled = 'A'
       AND x.tgname LIKE '\\_dataaccess\\_capture\\_%') = 4
"""
# Every table below another by inheritance (or partitioning): a write through the parent
# fires the parent's statement triggers only, yet changes the children's rows.
_DESCENDANTS = """
WITH RECURSIVE tree AS (
  SELECT inhparent AS root, inhrelid AS child FROM pg_inherits
  UNION SELECT tree.root, i.inhrelid FROM tree JOIN pg_inherits i ON i.inhparent = tree.child
)
SELECT p.relname, array_agg(DISTINCT c.relname) AS children
FROM tree JOIN pg_class p ON p.oid = tree.root JOIN pg_class c ON c.oid = tree.child
JOIN pg_namespace n ON n.oid = p.relnamespace WHERE n.nspname = $1 GROUP BY p.relname
"""
# Changes when a table, column, view definition, inheritance or trigger (or whether it
# is enabled) of the schema comes, goes or changes.
FINGERPRINT = """
SELECT md5(coalesce(string_agg(x, ',' ORDER BY x), '')) FROM (
  SELECT c.oid::text || ':' || c.relname || ':' || c.relnatts || ':' || c.relkind::text AS x
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
  UNION ALL
  SELECT t.oid::text || ':' || t.tgrelid::text || ':' || t.tgenabled::text FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = $1 AND NOT t.tgisinternal
  UNION ALL
  -- a view redefined in place keeps its oid: its rules' text says what it reads now
  SELECT r.oid::text || ':' || md5(r.ev_action::text) FROM pg_rewrite r
  JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = $1
  UNION ALL
  SELECT i.inhrelid::text || '<' || i.inhparent::text FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = $1
  UNION ALL
  SELECT a.attrelid::text || '.' || a.attnum || ':' || a.atttypid::text FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
) AS parts
"""
# Key candidates: the column lists (and their prefixes) of plain b-tree indexes whose
# columns all have a type whose text form the service can reproduce from a parameter.
_INDEX_KEYS = """
SELECT c.relname, array_agg(a.attname ORDER BY k.n) AS cols
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND i.indpred IS NULL AND i.indexprs IS NULL
  AND c.relname NOT LIKE '\\_dataaccess\\_%' AND c.relname <> 'schema_migrations'
  AND k.n <= i.indnkeyatts
GROUP BY c.relname, i.indexrelid
HAVING bool_and(t.typname IN ('int2', 'int4', 'int8', 'text', 'varchar')
                AND coalesce(co.collisdeterministic, true))
"""


async def load(connection: Conn, schema: str) -> Catalog:
    """The schema's tables, columns and the keys their installed triggers report."""
    tables: dict[str, dict[str, str]] = {}
    for row in await connection.fetch(_TABLES, schema):
        tables.setdefault(row["relname"], {})[row["attname"]] = row["typname"]
    keys: dict[str, tuple[tuple[str, ...], ...]] = {}
    for row in await connection.fetch(_TRIGGER_ARGS, schema):
        args = bytes(row["tgargs"]).split(b"\x00")
        keys[row["relname"]] = tuple(tuple(a.decode().split(",")) for a in args[1:] if a)
    fingerprint = await connection.fetchval(FINGERPRINT, schema)
    infos = {name: TableInfo(name, columns, keys.get(name, ())) for name, columns in tables.items()}
    descendants = {
        row["relname"]: frozenset(row["children"])
        for row in await connection.fetch(_DESCENDANTS, schema)
    }
    return Catalog(schema, infos, str(fingerprint), frozenset(keys), descendants)


def quote(identifier: str) -> str:
    """``identifier`` as a quoted SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


async def install_triggers(
    connection: Conn, schema: str, max_keys: int, with_keys: bool
) -> list[str]:
    """Install (or refresh) the capture triggers on every base table of ``schema`` the
    connection's role owns; the tables it could not (not their owner)."""
    body = CAPTURE_FUNCTION.format(
        schema=quote(schema), writer=WRITER_SETTING, changed=CHANGED_SETTING, channel=CHANNEL
    )
    await connection.execute(body)
    specs: dict[str, set[tuple[str, ...]]] = {}
    if with_keys:
        for row in await connection.fetch(_INDEX_KEYS, schema):
            cols = tuple(row["cols"])
            for end in range(1, len(cols) + 1):
                specs.setdefault(row["relname"], set()).add(cols[:end])
    owned = await connection.fetch(
        "SELECT c.relname, pg_has_role(c.relowner, 'USAGE') AS mine,"
        " (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgenabled = 'A'"
        "  AND t.tgname LIKE '\\_dataaccess\\_capture\\_%') AS triggers FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1"
        " AND c.relkind IN ('r', 'p') AND c.relname NOT LIKE '\\_dataaccess\\_%'"
        " AND c.relname <> 'schema_migrations' AND NOT c.relispartition",
        schema,
    )
    installed: dict[str, set[bytes]] = {}
    for row in await connection.fetch(_INSTALLED, schema):
        installed.setdefault(row["relname"], set()).add(bytes(row["tgargs"]))
    skipped = []
    for row in owned:
        if not row["mine"]:
            skipped.append(row["relname"])
            continue
        keys = sorted(specs.get(row["relname"], set()))
        args = [str(max_keys), *(",".join(k) for k in keys)]
        wanted = b"".join(a.encode() + b"\x00" for a in args)
        if installed.get(row["relname"]) == {wanted} and row["triggers"] == _TRIGGERS:
            # Unchanged: recreating them would change the schema's fingerprint, and every
            # replica would then reinstall them in turn, for ever.
            continue
        await _install_on(connection, schema, row["relname"], args)
    return skipped


async def _install_on(connection: Conn, schema: str, table: str, args: list[str]) -> None:
    target = f"{quote(schema)}.{quote(table)}"
    function = f"{quote(schema)}._dataaccess_capture({', '.join(map(_literal, args))})"
    statements = []
    for event in _EVENTS:
        name = quote(_TRIGGER_PREFIX + event)
        referencing = {
            "insert": "REFERENCING NEW TABLE AS new_rows",
            "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
            "delete": "REFERENCING OLD TABLE AS old_rows",
        }[event]
        statements.append(f"DROP TRIGGER IF EXISTS {name} ON {target}")
        statements.append(
            f"CREATE TRIGGER {name} AFTER {event.upper()} ON {target} {referencing}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {function}"
        )
        # Also in replica mode (session_replication_role = replica: logical replication,
        # pg_restore --disable-triggers, bulk loaders): a write must always report.
        statements.append(f"ALTER TABLE {target} ENABLE ALWAYS TRIGGER {name}")
    name = quote(_TRIGGER_PREFIX + "truncate")
    statements.append(f"DROP TRIGGER IF EXISTS {name} ON {target}")
    statements.append(
        f"CREATE TRIGGER {name} AFTER TRUNCATE ON {target}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {function}"
    )
    statements.append(f"ALTER TABLE {target} ENABLE ALWAYS TRIGGER {name}")
    async with connection.transaction():
        await connection.execute(";\n".join(statements))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Changed:
    """What a transaction's statements reported through the capture triggers."""

    tables: frozenset[str]
    keys: frozenset[tuple[str, str, tuple[str, ...]]]  # (table, key columns, values as text)
    untracked_keys: frozenset[str]  # tables whose changed keys were too many, or unknown


def parse_changed(text: str | None) -> Changed:
    """The lines ``dataaccess.changed`` holds at the end of a transaction."""
    tables: set[str] = set()
    keys: set[tuple[str, str, tuple[str, ...]]] = set()
    whole: set[str] = set()
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        table = str(item["t"])
        tables.add(table)
        if item.get("k") is None:
            whole.add(table)
            continue
        for spec, values in item["k"].items():
            for value in values:
                if None not in value:  # a NULL key is never found by an equality lookup
                    keys.add((table, spec, tuple(value)))
    return Changed(frozenset(tables), frozenset(keys), frozenset(whole))
