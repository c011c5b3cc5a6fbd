"""Migration files, whatever the engine: ``migrations/<database>/NNNN_name.sql``, read in
version order with a checksum each, so an applied migration whose file changed is caught."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_FILE_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The migrations cannot be applied; the message is one line."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str
    checksum: str


def load_migrations(folder: Path) -> list[Migration]:
    """The migrations in ``folder``, in version order."""
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version} is used twice")
        text = path.read_text(encoding="utf-8")
        digest = hashlib.sha256(text.encode()).hexdigest()
        found[version] = Migration(version, match.group(2), text, digest)
    return [found[v] for v in sorted(found)]
