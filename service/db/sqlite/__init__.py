"""The SQLite engine behind the ``Database`` door: one file per database.

``database`` is the door's implementation; behind it, ``connection`` (one
connection and its thread), ``pool`` (the readers), ``group_commit`` (the one
writer and its queue) and ``group_transactions`` (its work on the writer's
thread), ``guard`` (the authorizer), ``reads``, ``read_shapes``,
``write_plans``, ``idempotency``, ``outbox``, ``plans`` (query plans),
``probe`` (health findings), ``outside_writes`` (commits by other processes),
``schema``, ``migrate`` and ``error_map`` (sqlite3 errors -> DataAccessError).

Key-level invalidation: ``key_specs`` (each table's keys, and key values
normalised as SQLite compares them); on the read side ``keyed_reads`` over
``bytecode``, ``key_origins``, ``key_seeks`` and ``key_sources`` (which
tables a statement reads only by key lookups, and from which values); on the
write side ``key_capture`` (temp triggers reporting changed keys) and
``write_reach`` (what a write may change beyond them).
"""
