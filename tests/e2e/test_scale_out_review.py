"""An independent review of read replicas, consistency tokens and the client's bookmarks.

Each test here is a violation of a promise found in the review, written to fail until
it is fixed (its docstring gives the steps, what was observed and expected, the cause
and a fix). The PostgreSQL ones reuse ``test_scale_out``'s primary + streaming standby
(pg_basebackup) and its ``python -m service`` processes, all on 127.0.0.1, stopped by
their pids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess_client._bookmarks import Bookmarks
from tests.conftest import RedisProcess, Running, failure_of, row
from tests.e2e.test_scale_out import (
    DATABASE,
    Node,
    Pair,
    Service,
    Standby,
    _document,
    _position,
    migrations,
)

__all__ = ["migrations"]  # a fixture of test_scale_out's, used here too

pytestmark = [pytest.mark.integration]


# 1. Bad input: a token that is not database@position must answer INVALID_ARGUMENT.


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("kitchen@\u00b2", id="superscript-two"),  # str.isdigit() is True
        pytest.param("kitchen@" + "9" * 5000, id="5000-digits"),  # over int()'s 4300 digits
    ],
)
async def test_a_garbage_token_answers_invalid_argument_not_internal(
    running: Running, token: str
) -> None:
    """Steps: Query kitchen (SQLite; any engine) with consistency_token ``kitchen@²`` or
    ``kitchen@`` followed by 5000 nines.

    Observed: INTERNAL ("internal error: ValueError"). Expected: INVALID_ARGUMENT naming
    the field consistency_token, as for ``kitchen@x`` or ``kitchen@-1``.

    Cause: ``service.consistency.positions`` accepts a part when ``position.isdigit()``,
    which is True for Unicode digits such as ``²`` that ``int()`` refuses, and ``int()``
    refuses decimal strings over 4300 digits (Python's int_max_str_digits); the
    ValueError escapes as an unexpected error.

    Fix: match ``[0-9]{1,20}`` (ASCII, bounded: an LSN fits in 64 bits) instead of
    ``isdigit()``, or catch ValueError and raise InvalidArgument(field=
    "consistency_token"); the client's ``_bookmarks.positions`` has the same test.
    """
    request = pb.QueryRequest(database="kitchen", sql="SELECT 1", consistency_token=token)
    failure = await failure_of(running.stub.Query(request, timeout=10))
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT, failure
    assert "consistency_token" in failure.fields, failure


# 2. The client's bookmarks.


def test_a_client_read_with_its_own_token_still_carries_the_clients_writes() -> None:
    """Steps: a client's write answers ``kitchen@5000`` (the client remembers it); the
    same client then reads with ``consistency_token="orders@9"`` (a token handed over
    from another process, for another database the read may also touch).

    Observed: the read goes out with ``orders@9`` alone, so a lagging replica of kitchen
    answers it without the client's own write: read-your-writes is lost the moment a
    caller passes any token. Expected: the read carries both, ``kitchen@5000,orders@9``.

    Cause: ``Bookmarks.stamp`` only stamps a read "that does not carry one of its own".

    Fix: merge instead of skip, i.e. ``request.consistency_token =
    newest(request.consistency_token, self.token)`` (newest position per database).
    """
    bookmarks = Bookmarks()
    bookmarks.note(pb.BatchUpdateResponse(consistency_token="kitchen@5000"))
    request = pb.QueryRequest(database="kitchen", sql="SELECT 1", consistency_token="orders@9")
    bookmarks.stamp(request)
    sent = dict(part.split("@") for part in request.consistency_token.split(","))
    assert sent.get("kitchen") == "5000", request.consistency_token


def test_remembering_a_garbage_token_does_not_raise_value_error() -> None:
    """Steps: ``client.remember("kitchen@²")`` (a token read from another process, a
    header, a file: input the client does not control).

    Observed: ValueError from ``int("²")``. Expected: the part is skipped, as the
    client's ``positions`` promises ("parts that do not read as one are skipped"), or a
    clear ValueError naming the token; never a crash inside ``int()``.

    Cause: ``dataaccess_client._bookmarks.positions`` tests ``str.isdigit()``, which is
    True for Unicode digits ``int()`` refuses. Fix: test ``str.isascii() and
    str.isdigit()`` (and a bounded length).
    """
    bookmarks = Bookmarks()
    bookmarks.remember("kitchen@\u00b2,live@7")
    assert bookmarks.token == "live@7"


# 3. A token at the write's commit: pg_current_wal_lsn() is not that under async commit.


@pytest.fixture
def async_commit_pair() -> Iterator[Pair]:
    """A primary committing asynchronously (``synchronous_commit=off``, a setting
    operators do use for throughput; the WAL writer made slow, 10 s, so the window it
    leaves is deterministic rather than the default's ~200 ms to 600 ms), with one
    streaming standby; both stopped by their pids after the test."""
    primary = Node(
        [
            "wal_level=replica",
            "max_wal_senders=10",
            "hot_standby=on",
            "synchronous_commit=off",
            "wal_writer_delay=10s",
            "synchronous_standby_names=",
            "wal_keep_size=256MB",
        ]
    )
    standby: Standby | None = None
    try:
        primary.start()
        primary.psql(f"CREATE DATABASE {DATABASE}")
        standby = Standby(primary, ["hot_standby=on", "synchronous_standby_names="])
        standby.start()
        yield Pair(primary, standby)
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


def _flushed(pair: Pair) -> int:
    """Flush the primary's WAL to the end of a commit record (a synchronously committed
    transaction that wrote WAL flushes up to its commit; txid_current() alone would not:
    it writes no WAL before its commit) and wait until the standby has replayed it;
    that position. So the WAL write location ends where a record ends, as it does
    whenever the WAL writer or a synchronous commit flushed last."""
    pair.primary.psql("CREATE TABLE IF NOT EXISTS review_flush (x int)")
    pair.primary.psql("SET synchronous_commit = on; INSERT INTO review_flush VALUES (1)")
    position = pair.primary.lsn("pg_current_wal_flush_lsn()")
    assert position is not None
    pair.standby.wait_replayed(position)
    return position


@pytest.mark.slow
async def test_under_async_commit_a_read_with_the_writes_token_sees_the_write(
    async_commit_pair: Pair,
    redis_server: RedisProcess,
    migrations: Path,
    tmp_path: Path,
    service_process: Any,
) -> None:
    """Steps: a primary with ``synchronous_commit=off`` and its streaming standby, one
    service reading kitchen from the standby; item 1 is 'old' everywhere. BatchUpdate
    item 1 to 'new' (acknowledged, token T); at once Query item 1 with T (BYPASS).

    Observed: 'old', answered by the replica: T is at or behind what the standby had
    already replayed, so the replica counted as caught up, though it had not received
    the write's commit record. Expected: 'new' (the replica waits for T, or the primary
    answers).

    Cause: writer.py's position is ``pg_current_wal_lsn()``, the WAL *write* location.
    With asynchronous commit COMMIT returns before its commit record is written, so the
    write location can be before the commit (writer.py's comment "at or past the last
    commit record" holds only for synchronous commit). The same holds for the position
    an idempotent replay answers.

    Fix: ``SELECT pg_current_wal_insert_lsn()`` (always past the commit record this
    session inserted; a replica reaching it has the commit), or read the commit's own
    end position; a test with ``synchronous_commit=off`` like this one.
    """
    pair = async_commit_pair
    document = _document(
        tmp_path, pair.primary_url, redis_server, migrations, replicas=[pair.standby_url]
    )
    process = await asyncio.to_thread(service_process, document)
    service = Service("A", process.port)
    try:
        insert = pb.BatchInsertRequest(
            database=DATABASE, table="items", columns=["id", "t"], rows=[row(1, "old")]
        )
        await service.stub.BatchInsert(insert, timeout=10)
        await asyncio.to_thread(_flushed, pair)
        before = await service.reads()

        token = await service.write("new")
        seen, status = await service.read(pb.CACHE_MODE_BYPASS, token)
        after = await service.reads()

        committed = pair.primary.lsn("pg_current_wal_insert_lsn()")
        replayed = pair.standby.replayed()
        assert status == pb.CACHE_STATUS_BYPASS
        assert seen == "new", (
            f"stale read with the write's own token {token}: replica_reads "
            f"{before[0]}->{after[0]}, standby replayed {replayed}, the commit is at or "
            f"before {committed}, the token says {_position(token)}"
        )
    finally:
        await service.close()


# 4. Held (a guard, passes): huge positions are accepted; garbage among them is refused.


async def test_a_token_past_any_lsn_reads_at_once(
    running: Running,
) -> None:
    """Held, recorded for the report: a token with a position past 2**64 (and the
    writer's UNKNOWN_POSITION, 2**62) is accepted and compared as an integer; on SQLite
    (no replica) it is answered at once. Kept as a guard: it passes."""
    request = pb.QueryRequest(
        database="kitchen",
        sql="SELECT 1",
        consistency_token=f"kitchen@{2**70},nowhere@{2**62},kitchen@-",
    )
    failure = await failure_of(running.stub.Query(request, timeout=10))
    # "kitchen@-" is garbage: INVALID_ARGUMENT on the field, whatever else the token holds.
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT, failure
    request.consistency_token = f"kitchen@{2**70},nowhere@{2**62}"
    started = time.monotonic()
    answer: pb.QueryResponse = await running.stub.Query(request, timeout=10)
    assert time.monotonic() - started < 5
    assert len(answer.rows) == 1
