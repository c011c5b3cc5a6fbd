"""The tag-aware cache: answers kept under tag tokens in L1 and Redis, never served stale.

``tagged`` is the door (``TagCache``: get_or_load, find, invalidate, probe,
tiers); ``lookup`` serves a stored answer from L1 or Redis; ``loading`` runs
a miss once (single flight, the Redis lease) and stores it; ``tiers`` holds
tokens, L1 and Redis and keeps them coherent (delivering or holding
invalidations); ``figures`` is what observers read. Below them: ``tokens``,
``local`` (L1), ``redis_tier``, ``subscription`` (the invalidation channel),
``gate`` and ``breaker`` (when Redis may be used), ``settings`` and ``keys``.
Imports no ``grpc`` or generated code, and nothing of SQLite.
"""
