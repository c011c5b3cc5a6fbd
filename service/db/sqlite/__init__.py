"""The SQLite backend: one file per database, a reader pool, a group-commit writer."""
