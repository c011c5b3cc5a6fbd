"""The SQLite engine behind the ``Database`` door: one file per database.

``database`` is the door's implementation; behind it, ``connection`` (one
connection and its thread), ``pool`` (the readers), ``group_commit`` (the one
writer and its queue), ``guard`` (the authorizer), ``reads``, ``write_plans``,
``idempotency``, ``outbox``, ``plans`` (query plans), ``probe`` (health
findings), ``outside_writes`` (commits by other processes), ``schema``,
``migrate`` and ``error_map`` (sqlite3 errors -> DataAccessError).
"""
