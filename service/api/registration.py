"""How the DataAccess service is registered: Query in and out as bytes, the rest decoded here.

The generated registration would encode a QueryResponse; a cache hit already
holds the encoded answer, so Query's serializer passes bytes. Query's request
arrives as bytes too: a repeat is answered by identity. Every other request
is decoded here, after the caller is authenticated, so bytes that are not the
method's message get INVALID_ARGUMENT (grpc's own decoding failure says
UNKNOWN).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from dataaccess.v1 import data_access_pb2 as pb
from service import errors
from service.api.servicer import DataAccessServicer
from service.api.status import Context, abort


def add_to_server(servicer: DataAccessServicer, server: grpc.aio.Server) -> None:
    """Register the servicer; Query's answers are bytes, passed through unencoded."""
    service = pb.DESCRIPTOR.services_by_name["DataAccess"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        behavior = getattr(servicer, method.name)
        if method.name != "Query":
            behavior = _decoding(behavior, request_type, method.server_streaming, servicer)
        serialize = (
            _pass_bytes
            if method.name == "Query"
            else getattr(pb, method.output_type.name).SerializeToString
        )
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            behavior, request_deserializer=_keep_bytes, response_serializer=serialize
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


def _keep_bytes(request: bytes) -> bytes:
    return request


def _decoding(behavior: Any, request_type: Any, streaming: bool, servicer: Any) -> Any:
    """``behavior`` taking the request's bytes: the caller is authenticated, then they are
    decoded into ``request_type`` (nothing is parsed for a caller without credentials)."""
    if streaming:

        async def stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            request = await _decode(raw, request_type, context, servicer)
            async for answer in behavior(request, context):
                yield answer

        return stream

    async def unary(raw: bytes, context: Context) -> Any:
        return await behavior(await _decode(raw, request_type, context, servicer), context)

    return unary


async def _decode(raw: bytes, request_type: Any, context: Context, servicer: Any) -> Any:
    try:
        servicer._caller(context)
    except errors.DataAccessError as exc:
        await abort(context, exc)
    try:
        return request_type.FromString(raw)
    except DecodeError as exc:
        error = errors.InvalidArgument(f"the request is not a {request_type.__name__}: {exc}")
        await abort(context, error)


def _pass_bytes(answer: bytes | pb.QueryResponse) -> bytes:
    return answer if isinstance(answer, bytes) else answer.SerializeToString()
