"""The baseline a cached Query is held to: ``python -m bench.bare PORT RESPONSE_FILE``.

A bare grpc.aio server serving ``dataaccess.v1.DataAccess`` whose Query does
no work (BatchInsert and Stats neither: they answer fixed bytes, for the
write load): it parses the request as any servicer must, and answers the bytes of
a QueryResponse captured from the real server, through a response serializer
that passes them as they are, so not even protobuf encoding is paid.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import grpc

from dataaccess.v1 import data_access_pb2 as pb
from dataaccess.v1 import data_access_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DataAccess"].full_name
# The channel options service/server.py sets by default, so only the handler differs.
OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


class BareDataAccess(pb_grpc.DataAccessServicer):
    """Answers every Query with the same serialized response; the other RPCs are unimplemented."""

    def __init__(self, response: bytes) -> None:
        self._response = response

    async def Query(  # type: ignore[override]
        self, request: pb.QueryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        return self._response


def _as_is(response: bytes) -> bytes:
    return response


# BatchInsert's and Stats' answers: what the service answers a one-row insert, and no figures.
INSERTED = pb.BatchInsertResponse(rows_affected=1, consistency_token="events@1").SerializeToString()


def handlers(servicer: BareDataAccess) -> dict[str, grpc.RpcMethodHandler[Any, bytes]]:
    """Query's handler (the generated request parser, bytes passed through on the way out),
    and BatchInsert and Stats answering fixed bytes the same way, for the write load."""

    def fixed(answer: bytes) -> Any:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return answer

        return handle

    def unary(behavior: Any, request: Any) -> grpc.RpcMethodHandler[Any, bytes]:
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=request.FromString, response_serializer=_as_is
        )

    return {
        "Query": unary(servicer.Query, pb.QueryRequest),
        "BatchInsert": unary(fixed(INSERTED), pb.BatchInsertRequest),
        "Stats": unary(fixed(b""), pb.StatsRequest),
    }


async def serve(port: int, response: bytes) -> None:
    """Serve on ``port`` until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=OPTIONS)
    # Only these are registered: the stubs' abstract RPCs are never served, so never written.
    methods = handlers(BareDataAccess(response))  # type: ignore[abstract]
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, methods),))
    # As the generated add_DataAccessServicer_to_server does, for the registered-method path.
    server.add_registered_method_handlers(SERVICE_NAME, methods)  # type: ignore[attr-defined]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str]) -> None:
    """``PORT RESPONSE_FILE``: serve the file's bytes as every Query's answer."""
    port, response_file = argv
    asyncio.run(serve(int(port), Path(response_file).read_bytes()))


if __name__ == "__main__":
    main(sys.argv[1:])
