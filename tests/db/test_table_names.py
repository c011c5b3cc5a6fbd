"""Cache tags name tables as declared, however a statement spells them.

SQLite's authorizer reports a table as the statement wrote it when no column
of it is used (``count(*) FROM PUB``, ``EXISTS(SELECT 1 FROM Pub)``,
``main.PUB``); writes are tagged with the declared name. A read cached under
another spelling was served stale until its TTL. Property: whatever the
spellings and statement forms, a cached read after a write answers what
SQLite answers now.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from tests.conftest import _wait_serving, free_port, plain_rows, row

DECLARED = "Pub"
MIGRATION = f"CREATE TABLE {DECLARED} (id INTEGER PRIMARY KEY, name TEXT);\n"
BYPASS = pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)

READS = [
    "SELECT count(*) FROM {t}",
    "SELECT EXISTS(SELECT 1 FROM {t}), (SELECT count(*) FROM {t})",
    "SELECT count(*) FROM (SELECT 1 FROM {t})",
    "SELECT (SELECT count(*) FROM {t} AS p) AS n",
    "WITH c AS (SELECT 1 FROM {t}) SELECT count(*) FROM c",
    "SELECT max(id), count(*) FROM {t}",
]
WRITES = [
    "INSERT INTO {t} (name) VALUES ('x')",
    "INSERT INTO {t} DEFAULT VALUES",
    "DELETE FROM {t} WHERE id = (SELECT min(id) FROM {t})",
    "REPLACE INTO {t} (id, name) SELECT max(id) + 1, 'y' FROM {t}",
    "batch_insert",
]


@st.composite
def spellings(draw: st.DrawFn) -> str:
    """``Pub`` in any case, bare or quoted any way SQLite reads, qualified or not."""
    cased = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in DECLARED)
    quoted = draw(st.sampled_from(["{}", '"{}"', "[{}]", "`{}`"])).format(cased)
    return str(draw(st.sampled_from(["", "main.", "MAIN.", '"main".']))) + quoted


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.DataAccessStub]:
    """One ``python -m service`` with a table declared ``Pub``, for every example."""
    tmp = tmp_path_factory.mktemp("names")
    (tmp / "migrations").mkdir()
    (tmp / "migrations" / "0001_pub.sql").write_text(MIGRATION)
    (tmp / "data").mkdir()
    database = {"name": "pubs", "path": "pubs.db", "migrations": str(tmp / "migrations")}
    document = {"listen": "127.0.0.1:0", "data_dir": str(tmp / "data"), "databases": [database]}
    (tmp / "config.yaml").write_text(yaml.safe_dump(document))
    port = free_port()
    env = {
        **os.environ,
        "DATAACCESS_CONFIG": str(tmp / "config.yaml"),
        "DATAACCESS_LISTEN": f"127.0.0.1:{port}",
    }
    log = tmp / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, stdout=out, stderr=out
        )
    try:
        _wait_serving(port, process, log)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.DataAccessStub(channel)
    finally:
        process.kill()
        process.wait(10)


def _read(stub: pb_grpc.DataAccessStub, sql: str, cache: pb.CacheOptions | None = None) -> Any:
    return stub.Query(pb.QueryRequest(database="pubs", sql=sql, cache=cache), timeout=5)


def _write(stub: pb_grpc.DataAccessStub, form: str, spelling: str) -> Any:
    if form == "batch_insert":
        bare = spelling.rsplit(".", 1)[-1].strip('"[]`')  # BatchInsert takes a bare name
        request = pb.BatchInsertRequest(
            database="pubs", table=bare, columns=["name"], rows=[row("z")]
        )
        return stub.BatchInsert(request, timeout=5)
    statement = pb.Statement(sql=form.format(t=spelling))
    return stub.BatchUpdate(
        pb.BatchUpdateRequest(database="pubs", statements=[statement]), timeout=5
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    read_form=st.sampled_from(READS),
    read_as=spellings(),
    write_form=st.sampled_from(WRITES),
    write_as=spellings(),
)
def test_a_cached_read_is_never_stale_whatever_the_spelling(
    stub: pb_grpc.DataAccessStub, read_form: str, read_as: str, write_form: str, write_as: str
) -> None:
    sql = read_form.format(t=read_as)
    first = _read(stub, sql)
    assert f"table:pubs.{DECLARED}" in first.tags, first.tags
    assert not [
        t for t in first.tags if t.lower() == "table:pubs.pub" and t != f"table:pubs.{DECLARED}"
    ]
    assert _read(stub, sql).cache_status == pb.CACHE_STATUS_HIT_LOCAL  # it is cached

    written = _write(stub, write_form, write_as)
    assert list(written.invalidated_tags)[0] == f"table:pubs.{DECLARED}"
    # and the keys of the row it wrote (the key generation for a REPLACE), declared names too
    assert all(
        t.startswith(f"key:pubs.{DECLARED}.") or t == f"keys:pubs.{DECLARED}"
        for t in written.invalidated_tags[1:]
    )

    again = _read(stub, sql)
    assert again.cache_status != pb.CACHE_STATUS_HIT_LOCAL
    assert plain_rows(again) == plain_rows(_read(stub, sql, BYPASS))


def test_tags_use_the_declared_name_for_a_spelling_seen_first_by_a_write(
    stub: pb_grpc.DataAccessStub,
) -> None:
    """A write spelt ``PUB`` bumps ``Pub``; a read spelt ``pub`` is tagged ``Pub``."""
    written = _write(stub, "UPDATE {t} SET name = 'w' WHERE id = -1", "PUB")
    assert list(written.invalidated_tags)[0] == f"table:pubs.{DECLARED}"
    # and the keys of the row it wrote (the key generation for a REPLACE), declared names too
    assert all(
        t.startswith(f"key:pubs.{DECLARED}.") or t == f"keys:pubs.{DECLARED}"
        for t in written.invalidated_tags[1:]
    )
    read = _read(stub, "SELECT count(*) FROM pub AS p")
    assert [t for t in read.tags if t.startswith("table:")] == [f"table:pubs.{DECLARED}"]
