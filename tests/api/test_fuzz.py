"""Fuzzing: malformed protobuf bytes and generated requests never crash or hang the server.

Every call must end, within its deadline, with a status the contract names
for bad input (or OK); INTERNAL or UNKNOWN would mean the server broke, and
DEADLINE_EXCEEDED that a connection hung. The server answers Health after.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from typing import Any

import grpc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc
from tests.conftest import _wait_serving, base_document, free_port

pytestmark = pytest.mark.slow

CONTRACT = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
METHODS = ["Query", "QueryStream", "BatchInsert", "BatchUpdate", "Invalidate", "Health", "Stats"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One ``python -m service`` for the whole module (hypothesis calls it many times)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    document = base_document(tmp / "data")
    (tmp / "data").mkdir()
    port = free_port()
    (tmp / "config.yaml").write_text(yaml.safe_dump(document))
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
    _wait_serving(port, process, log)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, process
    channel.close()
    process.kill()
    process.wait(10)


def _status(call: Any) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, bytes):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _still_healthy(channel: grpc.Channel, process: Any) -> None:
    assert process.poll() is None, "the server died"
    pb_grpc.DataAccessStub(channel).Health(pb.HealthRequest(), timeout=2)


def test_random_bytes_to_every_method_get_a_contract_status(server: Any) -> None:
    channel, process = server
    pick = random.Random(5)
    for i in range(400):
        method = METHODS[i % len(METHODS)]
        garbage = bytes(pick.getrandbits(8) for _ in range(pick.randint(0, 300)))
        path = f"/dataaccess.v1.DataAccess/{method}"
        if method == "QueryStream":
            call = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
        else:
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        code = _status(lambda c=call, g=garbage: c(g, timeout=5))
        assert code in CONTRACT, (method, garbage.hex(), code)
    _still_healthy(channel, process)


FRAGMENTS = st.sampled_from(
    [
        "SELECT",
        "*",
        "FROM",
        "items",
        "parents",
        "secrets",
        "WHERE",
        "id",
        "=",
        "?",
        "(",
        ")",
        ",",
        "count(",
        "UNION",
        "ALL",
        "ORDER BY",
        "LIMIT",
        "-1",
        "9223372036854775807",
        "'x'",
        ";",
        "DROP TABLE items",
        "ATTACH 'x' AS y",
        "PRAGMA",
        "--",
        "/*",
        "é✓",
        "\x00",
        "WITH RECURSIVE",
    ]
)
VALUES = st.one_of(
    st.builds(lambda n: pb.Value(integer=n), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda x: pb.Value(real=x), st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda t: pb.Value(text=t), st.text(max_size=50)),
    st.builds(lambda b: pb.Value(blob=b), st.binary(max_size=50)),
    st.just(pb.Value()),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    database=st.sampled_from(["kitchen", "live", "nowhere", "", "é✓"]),
    fragments=st.lists(FRAGMENTS, max_size=12),
    nesting=st.integers(0, 600),
    params=st.lists(VALUES, max_size=5),
    max_rows=st.integers(-(2**31), 2**31 - 1),
)
def test_generated_queries_get_a_contract_status(
    server: Any,
    database: str,
    fragments: list[str],
    nesting: int,
    params: list[pb.Value],
    max_rows: int,
) -> None:
    channel, process = server
    sql = "(" * nesting + " ".join(fragments) + ")" * nesting
    request = pb.QueryRequest(database=database, sql=sql, params=params, max_rows=max_rows)
    stub = pb_grpc.DataAccessStub(channel)
    code = _status(lambda: stub.Query(request, timeout=5))
    assert code in CONTRACT, (request, code)
    assert process.poll() is None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    table=st.sampled_from(["items", "parents", "nope", ""]),
    columns=st.lists(st.sampled_from(["qty", "t", "b", "r", "id", "code", "zz"]), max_size=4),
    rows=st.lists(st.lists(VALUES, max_size=4), max_size=5),
)
def test_generated_inserts_get_a_contract_status(
    server: Any, table: str, columns: list[str], rows: list[list[pb.Value]]
) -> None:
    channel, process = server
    request = pb.BatchInsertRequest(
        database="kitchen", table=table, columns=columns, rows=[pb.Row(values=r) for r in rows]
    )
    code = _status(lambda: pb_grpc.DataAccessStub(channel).BatchInsert(request, timeout=5))
    assert code in CONTRACT, (request, code)
    assert process.poll() is None
