"""Statement fingerprints: literals out, comments out, identifiers and placeholders kept."""

from __future__ import annotations

import pytest

from service.fingerprint import fingerprint


@pytest.mark.parametrize(
    ("sql", "shape"),
    [
        (
            "SELECT * FROM t WHERE a = 'x''y' AND b = 12.5e3",
            "SELECT * FROM t WHERE a = ? AND b = ?",
        ),
        (
            "SELECT x1, t2.y FROM t2 WHERE id IN (1, 2,3)",
            "SELECT x1, t2.y FROM t2 WHERE id IN (?, ?,?)",
        ),
        (
            'SELECT "col 1" FROM t -- the secret is 42\n WHERE k = ?',
            'SELECT "col 1" FROM t WHERE k = ?',
        ),
        ("SELECT X'ABCD', 0x1F /* note */ FROM t", "SELECT ?, ? FROM t"),
        ("select  a\n\tfrom   b", "select a from b"),
    ],
)
def test_fingerprints(sql: str, shape: str) -> None:
    assert fingerprint(sql) == shape
