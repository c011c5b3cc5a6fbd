"""Pure logic of the PostgreSQL backend's read shapes: what ``plans.analyse`` learns from an
``EXPLAIN (VERBOSE, FORMAT JSON)`` answer, and the pure functions of ``shapes`` (refused
functions, key digests, keyed scans, allowed relations, the shape memo).

The plans below are real PostgreSQL 15 answers (generic plans of the kitchen schema,
trimmed of cost fields), so the tests see what the server prints.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from service import errors
from service.db.door import KeyLookup
from service.db.postgres.catalog import Catalog, TableInfo
from service.db.postgres.plans import Scan, analyse, any_of, conjuncts, equality
from service.db.postgres.shapes import (
    KeyedScan,
    PgShape,
    ShapeMemo,
    check_relations,
    digest,
    keyed_scans,
    refused,
)

pytestmark = pytest.mark.unit

ITEM_COLUMNS = ["id", "parent_id", "i", "r", "t", "b", "n", "code", "qty"]


def scan_node(
    relation: str, alias: str | None = None, fields: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A scan node as EXPLAIN prints it."""
    node: dict[str, Any] = {
        "Node Type": "Seq Scan",
        "Parallel Aware": False,
        "Relation Name": relation,
        "Schema": "public",
        "Alias": alias or relation,
        "Plan Rows": 1,
        "Output": [f"{alias or relation}.id"],
    }
    node.update(fields or {})
    node.update(extra)
    return node


def explained(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The list EXPLAIN (FORMAT JSON) answers."""
    return [{"Plan": plan}]


KEYED_PLAN = scan_node(
    "items",
    None,
    {
        "Node Type": "Index Scan",
        "Index Name": "items_pkey",
        "Output": ITEM_COLUMNS,
        "Index Cond": "(items.id = $1)",
    },
)
RANGE_PLAN = scan_node("items", Output=ITEM_COLUMNS, Filter="(items.id > $1)")
OR_PLAN = scan_node(
    "items",
    None,
    {
        "Node Type": "Bitmap Heap Scan",
        "Recheck Cond": "((items.id = $1) OR (items.id = $2))",
        "Plans": [
            {
                "Node Type": "BitmapOr",
                "Parent Relationship": "Outer",
                "Plans": [
                    {
                        "Node Type": "Bitmap Index Scan",
                        "Index Name": "items_pkey",
                        "Index Cond": "(items.id = $1)",
                    },
                    {
                        "Node Type": "Bitmap Index Scan",
                        "Index Name": "items_pkey",
                        "Index Cond": "(items.id = $2)",
                    },
                ],
            }
        ],
    },
)
# SELECT o.id FROM items o JOIN parents p ON o.parent_id = p.id WHERE p.id = $1
JOIN_PLAN = {
    "Node Type": "Nested Loop",
    "Join Type": "Inner",
    "Output": ["o.id"],
    "Plans": [
        scan_node(
            "parents",
            "p",
            {
                "Node Type": "Index Only Scan",
                "Index Name": "parents_pkey",
                "Parent Relationship": "Outer",
                "Index Cond": "(p.id = $1)",
            },
        ),
        scan_node("items", "o", {"Parent Relationship": "Inner", "Filter": "(o.parent_id = $1)"}),
    ],
}
# SELECT now(), random(), CURRENT_TIMESTAMP FROM parents WHERE name = 'it''s (x)'
CLOCK_PLAN = scan_node(
    "parents",
    None,
    {
        "Node Type": "Index Only Scan",
        "Index Name": "parents_name_key",
        "Output": ["now()", "random()", "CURRENT_TIMESTAMP"],
        "Index Cond": "(parents.name = 'it''s (x)'::text)",
    },
)
# SELECT * FROM items WHERE qty = $1
#   AND id = (SELECT min(p.id) FROM parents p WHERE p.name = 'one')
# PostgreSQL 15 prints the InitPlan's output parameter as "$1" too: the same text as the
# statement's own first parameter.
INITPLAN_PLAN = scan_node(
    "items",
    None,
    {
        "Node Type": "Index Scan",
        "Index Name": "items_pkey",
        "Output": [f"items.{c}" for c in ITEM_COLUMNS],
        "Index Cond": "(items.id = $1)",
        "Filter": "(items.qty = $1)",
        "Plans": [
            {
                "Node Type": "Aggregate",
                "Strategy": "Plain",
                "Parent Relationship": "InitPlan",
                "Subplan Name": "InitPlan 1 (returns $1)",
                "Output": ["min(p.id)"],
                "Plans": [
                    scan_node(
                        "parents",
                        "p",
                        {"Parent Relationship": "Outer", "Filter": "(p.name = 'one'::text)"},
                    )
                ],
            }
        ],
    },
)


def kitchen_catalog() -> Catalog:
    """The kitchen schema as the catalog sees it, with an index on items.parent_id."""
    items = TableInfo(
        "items",
        {
            "id": "int4",
            "parent_id": "int4",
            "i": "int8",
            "r": "float8",
            "t": "text",
            "b": "bytea",
            "n": "text",
            "code": "text",
            "qty": "int4",
        },
        (("code",), ("id",), ("parent_id",)),
    )
    parents = TableInfo("parents", {"id": "int4", "name": "text"}, (("id",), ("name",)))
    pairs = TableInfo(
        "pairs",
        {"a": "int4", "b": "text", "u": "uuid"},
        (("a",), ("a", "b"), ("u",)),
    )
    secrets = TableInfo("secrets", {"id": "int4", "value": "text"}, (("id",),))
    tables = {t.name: t for t in (items, parents, pairs, secrets)}
    return Catalog("public", tables, "print", frozenset(tables))


# plans.analyse


def test_an_equality_on_the_primary_key_is_a_keyed_scan() -> None:
    facts = analyse(explained(KEYED_PLAN))
    assert facts.scans == [Scan("public", "items", {"id": (0,)})]
    assert facts.relations == {("public", "items")}
    assert facts.top_node == "Index Scan"
    assert facts.operation == ""
    assert not facts.keyword_functions and not facts.uncacheable_nodes


def test_a_range_or_an_or_restricts_to_no_key() -> None:
    assert analyse(explained(RANGE_PLAN)).scans == [Scan("public", "items", {})]
    facts = analyse(explained(OR_PLAN))
    # the bitmap index scans name no relation: only the heap scan counts, and its
    # condition is one OR, not two equalities
    assert facts.scans == [Scan("public", "items", {})]


def test_a_join_restricts_both_tables_through_the_equivalence() -> None:
    facts = analyse(explained(JOIN_PLAN))
    by_table = {scan.table: dict(scan.equal) for scan in facts.scans}
    assert by_table == {"parents": {"id": (0,)}, "items": {"parent_id": (0,)}}
    assert facts.top_node == "Nested Loop"


def test_clock_functions_and_keywords_are_found_but_not_inside_literals() -> None:
    facts = analyse(explained(CLOCK_PLAN))
    assert {"now", "random"} <= facts.calls
    assert facts.keyword_functions
    assert facts.scans == [Scan("public", "parents", {"name": ("it's (x)",)})]
    assert "it''s" not in facts.text  # literals are blanked in the text operators are sought in


def test_a_name_inside_a_string_or_a_quoted_identifier_is_no_call() -> None:
    plan = scan_node(
        "parents",
        Output=['parents."weird(col"', "lower(parents.name)"],
        Filter="(parents.name = 'set_config(''role'', ''x'', false)'::text)",
    )
    facts = analyse(explained(plan))
    assert facts.calls == {"lower"}
    assert not facts.keyword_functions


def test_an_output_column_followed_by_a_condition_is_no_call() -> None:
    """The plan's strings are joined with spaces before ``name(`` is sought: the last
    ``Output`` column then reads as a call of the condition that follows it. A column
    named like a stable function (``age``) makes every keyed read of the table
    uncacheable; one named like a refused function (``lo_limit``) makes it refused."""
    plan = scan_node(
        "people",
        None,
        {
            "Node Type": "Index Scan",
            "Output": ["people.id", "people.name", "people.age"],
            "Index Cond": "(people.id = $1)",
        },
    )
    assert analyse(explained(plan)).calls == set()
    plan["Output"] = ["people.id", "people.lo_limit"]
    assert analyse(explained(plan)).calls == set()
    clock = analyse(explained(CLOCK_PLAN))
    assert clock.calls == {"now", "random"}  # CURRENT_TIMESTAMP is a keyword, not a call


def test_a_keyword_word_in_a_literal_is_no_keyword_function() -> None:
    plan = scan_node("parents", Filter="(parents.name = 'CURRENT_USER'::text)")
    assert not analyse(explained(plan)).keyword_functions


def test_a_modify_table_root_is_a_write_of_its_table() -> None:
    plan = {
        "Node Type": "ModifyTable",
        "Operation": "Insert",
        "Relation Name": "secrets",
        "Schema": "public",
        "Alias": "secrets",
        "Plans": [{"Node Type": "Result", "Output": ["5", "'x'::text"]}],
    }
    facts = analyse({"Plan": plan})  # EXPLAIN's object is taken as well as its list
    assert facts.top_node == "ModifyTable"
    assert facts.operation == "Insert"
    assert facts.relations == {("public", "secrets")}


def test_sample_and_foreign_scans_make_a_result_uncacheable() -> None:
    sample = scan_node("items", None, {"Node Type": "Sample Scan"})
    assert analyse(explained(sample)).uncacheable_nodes
    assert not analyse(explained(RANGE_PLAN)).uncacheable_nodes


def test_an_initplan_output_is_not_taken_for_the_statements_parameter() -> None:
    """``$1`` in ``items.id = $1`` is the InitPlan's result here, not the caller's first
    parameter: keying the read on that parameter's value tags it with a key it never
    read (and a write of the row it did read leaves it cached)."""
    facts = analyse(explained(INITPLAN_PLAN))
    items = next(scan for scan in facts.scans if scan.table == "items")
    # Both print as $1: with a sub-plan in the plan, no $n is taken as the caller's.
    assert "id" not in items.equal and "qty" not in items.equal, items.equal
    assert "items" not in keyed_scans(facts, kitchen_catalog())


# plans.conjuncts and plans.equality


def test_conjuncts_split_top_level_ands_only() -> None:
    assert conjuncts("((items.id = $1) AND (items.qty = 2))") == ["items.id = $1", "items.qty = 2"]
    assert conjuncts("((a = 1) OR (b = 2))") == ["(a = 1) OR (b = 2)"]
    assert conjuncts("((a = 1) AND ((b = 2) OR (c = 3)))") == ["a = 1", "(b = 2) OR (c = 3)"]
    # an AND inside a string literal is no conjunction
    assert conjuncts("((t.name = 'x AND y'::text) AND (t.id = $2))") == [
        "t.name = 'x AND y'::text",
        "t.id = $2",
    ]
    # parentheses inside a literal do not unbalance it
    assert conjuncts("((t.name = ')('::text) AND (t.id = 1))") == [
        "t.name = ')('::text",
        "t.id = 1",
    ]
    assert conjuncts("(a = 1)") == ["a = 1"]


@pytest.mark.parametrize(
    ("conjunct", "expected"),
    [
        ("items.id = $1", ("id", (0,))),
        ("items.id = $12", ("id", (11,))),
        ("id = $2", ("id", (1,))),
        ("items.id = 42", ("id", ("42",))),
        ("items.id = '-5'::integer", ("id", ("-5",))),
        ("items.id = ($1)::bigint", ("id", (0,))),
        ("items.code = 'a''b'::text", ("code", ("a'b",))),
        ("(items.code)::text = $1", ("code", (0,))),
        ("(items.code)::text = 'x'::text", ("code", ("x",))),
        ('t."Weird ""Col""" = $1', ('Weird "Col"', (0,))),
        ('"My Table".id = $3', ("id", (2,))),
    ],
)
def test_equality_finds_column_and_source(
    conjunct: str, expected: tuple[str, tuple[int | str, ...]]
) -> None:
    assert equality(conjunct) == expected


def test_an_in_list_keys_by_each_of_its_values() -> None:
    assert any_of("items.id = ANY (ARRAY[$1, $2])") == ("id", (0, 1))
    assert any_of("items.id = ANY ('{1,2}'::integer[])") == ("id", ("1", "2"))
    assert any_of("items.id = ANY ($1)") is None
    plan = scan_node("items", Filter="(items.id = ANY (ARRAY[$1, $2]))")
    found = keyed_scans(analyse(explained(plan)), kitchen_catalog())
    assert found == {"items": KeyedScan(("id",), ("int",), (((0, 1),),))}
    shape = make_shape(found)
    assert shape.keyed((3, 4)) == {
        "items": KeyLookup("id", tuple(sorted({digest(("3",)), digest(("4",))})))
    }


@pytest.mark.parametrize(
    "conjunct",
    [
        "items.id > $1",
        "items.id <> $1",
        "items.id = upper($1)",
        "items.id = ($1 + 1)",
        "$1 = items.id",
        "items.id = p.id",
        "items.id = ANY ($1)",
        "(items.id)::numeric = 5.5",
        "items.id IS NULL",
        "(items.id = $1) OR (items.id = $2)",
        "lower(items.code) = $1",
    ],
)
def test_equality_refuses_anything_else(conjunct: str) -> None:
    assert equality(conjunct) is None


# shapes: refused functions


@pytest.mark.parametrize(
    "name",
    [
        "set_config",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "lo_import",
        "lo_export",
        "pg_advisory_lock",
        "pg_advisory_xact_lock",
        "pg_try_advisory_lock",
        "query_to_xml",
        "table_to_xml",
        "dblink",
        "dblink_exec",
        "dblink_connect_u",
        "pg_notify",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "txid_current",
    ],
)
def test_functions_that_reach_outside_or_change_the_session_are_refused(name: str) -> None:
    assert refused(name)


@pytest.mark.parametrize(
    "name", ["now", "random", "count", "lower", "pg_sleep", "jsonb_build_object", "current_setting"]
)
def test_ordinary_functions_are_not_refused(name: str) -> None:
    assert not refused(name)


# shapes: digests and keyed shapes


def test_digest_is_the_blake2b_of_the_json_values() -> None:
    expected = hashlib.blake2b(b'["7"]', digest_size=12).hexdigest()
    assert digest(("7",)) == expected
    assert len(expected) == 24
    assert digest(("a", "b")) != digest(("a,b",))
    assert digest(("é",)) == hashlib.blake2b('["é"]'.encode(), digest_size=12).hexdigest()


def make_shape(keyed: dict[str, KeyedScan], may_cache: bool = True) -> PgShape:
    return PgShape(frozenset({"items", "parents"}), may_cache, keyed, 3, [3])


def test_a_keyed_shape_digests_the_parameters_as_postgresql_prints_the_key() -> None:
    by_id = KeyedScan(("id",), ("int",), (((0,),),))
    by_name = KeyedScan(("name",), ("text",), (((1,),),))
    shape = make_shape({"items": by_id, "parents": by_name})
    assert shape.keyed((7, "one")) == {
        "items": KeyLookup("id", (digest(("7",)),)),
        "parents": KeyLookup("name", (digest(("one",)),)),
    }


def test_a_parameter_of_the_wrong_kind_falls_back_to_the_table_tag() -> None:
    by_id = KeyedScan(("id",), ("int",), (((0,),),))
    shape = make_shape({"items": by_id})
    assert shape.keyed(("7",)) == {}  # text for an integer key: PostgreSQL may print it otherwise
    assert shape.keyed((True,)) == {}  # a boolean is no integer key
    assert shape.keyed((7.0,)) == {}
    assert shape.keyed(()) == {}  # the parameter is missing
    assert shape.keyed({"id": 7}) == {}  # named parameters never key a read


def test_literals_and_several_scans_give_sorted_distinct_digests() -> None:
    scan = KeyedScan(("id",), ("int",), (((0,),), (("5",),), ((1,),)))
    shape = make_shape({"items": scan})
    lookup = shape.keyed((5, 9))["items"]
    assert lookup.columns == "id"
    assert lookup.digests == tuple(sorted({digest(("5",)), digest(("9",))}))
    composite = KeyedScan(("a", "b"), ("int", "text"), (((0,), (1,)),))
    assert make_shape({"pairs": composite}).keyed((1, "x")) == {
        "pairs": KeyLookup("a,b", (digest(("1", "x")),))
    }


def test_a_shape_is_current_until_the_catalog_changes() -> None:
    cell = [3]
    shape = PgShape(frozenset({"items"}), False, {}, 3, cell)
    assert shape.current()
    assert not shape.cacheable(())
    cell[0] += 1
    assert not shape.current()


def test_the_memo_drops_the_least_recently_used_shape() -> None:
    memo = ShapeMemo(size=2)
    shapes = {sql: make_shape({}) for sql in ("a", "b", "c")}
    memo.put("a", shapes["a"])
    memo.put("b", shapes["b"])
    assert memo.get("a") is shapes["a"]  # now "b" is the oldest
    memo.put("c", shapes["c"])
    assert memo.get("b") is None
    assert memo.get("a") is shapes["a"] and memo.get("c") is shapes["c"]
    memo.clear()
    assert memo.get("a") is None and memo.get("c") is None


# shapes: relations and keyed scans


def test_check_relations_returns_the_allowed_tables_read() -> None:
    catalog = kitchen_catalog()
    facts = analyse(explained(JOIN_PLAN))
    allowed = frozenset({"items", "parents"})
    assert check_relations(facts, catalog, allowed, "kitchen") == {"items", "parents"}
    assert check_relations(facts, catalog, None, "kitchen") == {"items", "parents"}
    # an allowed list spelt in lower case admits a table of another case
    upper = analyse(explained(scan_node("Items")))
    assert check_relations(upper, catalog, frozenset({"items"}), "kitchen") == {"Items"}


@pytest.mark.parametrize(
    ("schema", "table"),
    [
        ("pg_catalog", "pg_authid"),
        ("information_schema", "tables"),
        ("other", "items"),
        ("public", "_dataaccess_outbox"),
        ("public", "_dataaccess_idempotency"),
        ("public", "secrets"),
    ],
)
def test_check_relations_refuses_other_schemas_internal_and_unlisted_tables(
    schema: str, table: str
) -> None:
    plan = scan_node(table, Schema=schema)
    facts = analyse(explained(plan))
    with pytest.raises(errors.PermissionDenied):
        check_relations(facts, kitchen_catalog(), frozenset({"items", "parents"}), "kitchen")


def test_internal_tables_are_refused_even_when_every_table_is_allowed() -> None:
    facts = analyse(explained(scan_node("_dataaccess_outbox")))
    with pytest.raises(errors.PermissionDenied):
        check_relations(facts, kitchen_catalog(), None, "kitchen")


def test_keyed_scans_of_a_join_key_both_tables() -> None:
    found = keyed_scans(analyse(explained(JOIN_PLAN)), kitchen_catalog())
    assert found == {
        "parents": KeyedScan(("id",), ("int",), (((0,),),)),
        "items": KeyedScan(("parent_id",), ("int",), (((0,),),)),
    }


def test_keyed_scans_need_every_scan_of_a_table_on_one_reported_key() -> None:
    catalog = kitchen_catalog()
    assert keyed_scans(analyse(explained(RANGE_PLAN)), catalog) == {}
    assert keyed_scans(analyse(explained(OR_PLAN)), catalog) == {}
    # the same table scanned twice, by different keys: no one key covers both
    twice = {
        "Node Type": "Append",
        "Plans": [
            scan_node("items", Filter="(items.id = $1)"),
            scan_node("items", Filter="(items.code = $2)"),
        ],
    }
    assert keyed_scans(analyse(explained(twice)), catalog) == {}
    # ... or by the same key: both values key it
    same = {
        "Node Type": "Append",
        "Plans": [
            scan_node("items", Filter="(items.id = $1)"),
            scan_node("items", Filter="(items.id = 4)"),
        ],
    }
    assert keyed_scans(analyse(explained(same)), catalog) == {
        "items": KeyedScan(("id",), ("int",), (((0,),), (("4",),)))
    }


def test_keyed_scans_take_the_longest_key_and_skip_unreproducible_types() -> None:
    catalog = kitchen_catalog()
    both = scan_node("pairs", Filter="((pairs.a = $1) AND (pairs.b = 'x'::text))")
    assert keyed_scans(analyse(explained(both)), catalog) == {
        "pairs": KeyedScan(("a", "b"), ("int", "text"), (((0,), ("x",)),))
    }
    prefix = scan_node("pairs", Filter="(pairs.a = $1)")
    assert keyed_scans(analyse(explained(prefix)), catalog)["pairs"].columns == ("a",)
    by_uuid = scan_node("pairs", Filter="(pairs.u = $1)")
    assert keyed_scans(analyse(explained(by_uuid)), catalog) == {}
    unknown = scan_node("elsewhere", Filter="(elsewhere.id = $1)")
    assert keyed_scans(analyse(explained(unknown)), catalog) == {}


def test_a_real_explain_answer_round_trips_through_json() -> None:
    text = json.dumps(explained(JOIN_PLAN))
    assert analyse(json.loads(text)).relations == {("public", "items"), ("public", "parents")}
