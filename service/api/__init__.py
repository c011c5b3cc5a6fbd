"""The api tier, the only place in the service that knows gRPC and protobuf.

``servicer`` (one short method per RPC), ``requests`` (proto -> domain) and
``responses`` (domain -> proto) over ``codec`` (proto Values <-> Python
values) and ``columns`` (a BatchInsert's columnar form -> rows), ``status``
(DataAccessError -> gRPC status, in one place), ``registration`` (Query
served as bytes), ``auth`` (bearer tokens from call metadata) and
``admission`` (call slots per caller), ``tls``, and the server interceptors
(call metrics, tracing spans). Nothing below this package imports ``grpc``,
``google.protobuf`` or the generated code.
"""
