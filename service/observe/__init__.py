"""The observe tier: telemetry (tracing), Prometheus metrics, Stats, Health and logs.

Each asks the tiers for their figures (cache, router and databases, writers)
and reports them; none of it is on the data path, and none of it imports
``grpc`` or generated code (the gRPC interceptors that feed it live in
``service.api``).
"""
