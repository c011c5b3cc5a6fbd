"""Migrations: ordered, checksummed, recorded; a changed applied one stops the start."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from service.db.sqlite.migrate import MigrationError, apply_migrations


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_first.sql").write_text("CREATE TABLE a (x INTEGER);\n")
    (folder / "0002_second.sql").write_text(
        "CREATE TABLE b (y TEXT);\nCREATE TRIGGER t AFTER INSERT ON a BEGIN\n"
        "  INSERT INTO b VALUES ('fired');\nEND;\nINSERT INTO a VALUES (1);\n"
    )
    return folder


def test_migrations_apply_in_order_once(tmp_path: Path) -> None:
    folder, path = _folder(tmp_path), tmp_path / "db.sqlite"
    assert apply_migrations("db", path, folder) == ["0001_first", "0002_second"]
    assert apply_migrations("db", path, folder) == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT y FROM b").fetchall() == [("fired",)]
        versions = conn.execute("SELECT version, name, length(checksum) FROM schema_migrations")
        assert versions.fetchall() == [(1, "first", 64), (2, "second", 64)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_changed_applied_migration_stops_the_start(tmp_path: Path) -> None:
    folder, path = _folder(tmp_path), tmp_path / "db.sqlite"
    apply_migrations("db", path, folder)
    (folder / "0001_first.sql").write_text("CREATE TABLE a (x INTEGER, z TEXT);\n")
    with pytest.raises(MigrationError, match="0001_first changed after it was applied"):
        apply_migrations("db", path, folder)


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    folder, path = _folder(tmp_path), tmp_path / "db.sqlite"
    (folder / "0003_broken.sql").write_text("CREATE TABLE c (z);\nINSERT INTO nope VALUES (1);\n")
    with pytest.raises(MigrationError, match="0003_broken failed"):
        apply_migrations("db", path, folder)
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema")}
        assert "c" not in tables
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (2,)


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "3_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_name.sql"):
        apply_migrations("db", tmp_path / "db.sqlite", folder)


def test_the_migrate_command_applies_the_embedded_default(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "data" / "live.db") as conn:
        assert conn.execute("SELECT count(*) FROM products").fetchone() == (4,)


def test_two_processes_migrating_one_file_at_once_apply_each_migration_once(
    tmp_path: Path,
) -> None:
    folder, path = _folder(tmp_path), tmp_path / "db.sqlite"
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from service.db.sqlite.migrate import apply_migrations\n"
        "print(','.join(apply_migrations('db', Path(sys.argv[1]), Path(sys.argv[2]))))\n"
    )
    for _ in range(5):
        path.unlink(missing_ok=True)
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(path), str(folder)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [run.communicate(timeout=60) for run in runs]
        assert [run.returncode for run in runs] == [0, 0, 0], outputs
        applied = [name for out, _ in outputs for name in out.strip().split(",") if name]
        assert sorted(applied) == ["0001_first", "0002_second"]
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT y FROM b").fetchall() == [("fired",)]
