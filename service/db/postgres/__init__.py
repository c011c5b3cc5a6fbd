"""PostgreSQL behind the ``Database`` door: asyncpg pools, plans read from PostgreSQL's own
EXPLAIN, writes whose tables and keys come from statement-level triggers."""
