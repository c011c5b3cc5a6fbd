"""The connection type every PostgreSQL module takes: a plain asyncpg connection, or one
lent by a pool (a proxy with the same methods)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

if TYPE_CHECKING:
    Conn = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:  # neither is subscriptable at run time
    Conn = asyncpg.Connection | PoolConnectionProxy
