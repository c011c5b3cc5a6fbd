"""The api tier, the only place in the service that knows gRPC and protobuf.

The servicer (proto <-> domain, one DataAccess coroutine per RPC), the proto
<-> Python value codec, the DataAccessError -> gRPC status table, and the
server interceptors (call metrics, tracing spans). Nothing below this package
imports ``grpc``, ``google.protobuf`` or the generated code.
"""
