"""Read-your-writes: the newest consistency token a client has seen, sent with its reads.

Every write answer carries a token (``"orders@23803720"``: where the write committed on
each database). The client keeps the newest position per database and puts them on its
reads, so a read replica answers a read only once it has replayed this client's writes
(as Cloudflare D1's sessions do with bookmarks). A token from another process (say, the
one that wrote) is merged with ``remember``; ``consistency=False`` turns it all off.
"""

from __future__ import annotations

import threading

from dataaccess.v1 import data_access_pb2 as pb


def positions(token: str) -> dict[str, int]:
    """A token's position per database (parts that do not read as one are skipped)."""
    found: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in token.split(","))):
        database, at, position = part.rpartition("@")
        if at and database and position.isascii() and position.isdigit() and len(position) <= 40:
            found[database] = max(int(position), found.get(database, 0))
    return found


class Bookmarks:
    """The newest position per database this client has seen (safe across threads)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._newest: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def token(self) -> str:
        """Every database's newest position, as one token."""
        with self._lock:
            items = sorted(self._newest.items())
        return ",".join(f"{database}@{position}" for database, position in items)

    def remember(self, token: str) -> None:
        """Merge ``token`` (from a write's answer, or another process)."""
        found = positions(token)
        with self._lock:
            for database, position in found.items():
                if position > self._newest.get(database, 0):
                    self._newest[database] = position

    def stamp(self, request: object) -> None:
        """Put the newest token on a read, merged with one the caller gave (the newest
        position of each database wins), so a given token never hides this client's
        own writes."""
        if not (self.enabled and isinstance(request, pb.QueryRequest)):
            return
        merged = dict(positions(request.consistency_token))
        with self._lock:
            for database, position in self._newest.items():
                merged[database] = max(position, merged.get(database, 0))
        request.consistency_token = ",".join(
            f"{database}@{position}" for database, position in sorted(merged.items())
        )

    def note(self, response: object) -> None:
        """Remember the token of a write's answer."""
        if self.enabled and isinstance(response, pb.BatchInsertResponse | pb.BatchUpdateResponse):
            self.remember(response.consistency_token)
