"""``python -m bench.chart RESULTS.json OUT.png``: the benchmark table as a picture.

Run by the bench venv (matplotlib). Throughput rows on the left, latency
rows on the right: the service's median next to what it is compared with,
min-max as error bars, and each ratio with its goal written beside it.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _bars(axis: Any, rows: list[dict[str, Any]], unit_label: str) -> None:
    names = [r["scenario"].strip() for r in rows][::-1]
    rows = rows[::-1]
    positions = range(len(rows))
    for offset, key, label, colour in (
        (0.2, "ours", "dataaccess", "#1f77b4"),
        (-0.2, "theirs", "compared with", "#bbbbbb"),
    ):
        medians = [statistics.median(r[key]) for r in rows]
        low = [m - min(r[key]) for m, r in zip(medians, rows, strict=True)]
        high = [max(r[key]) - m for m, r in zip(medians, rows, strict=True)]
        axis.barh(
            [p + offset for p in positions],
            medians,
            height=0.38,
            xerr=[low, high],
            color=colour,
            label=label,
            capsize=2,
        )
    for position, row in zip(positions, rows, strict=True):
        ratio = statistics.median(row["ratios"])
        goal = (
            f" (goal {'<=' if row.get('lower_is_better') else '>='} {row['goal']:g})"
            if row["goal"]
            else ""
        )
        axis.text(
            0.99,
            position,
            f"{ratio:.2f}x vs {row['against']}{goal}",
            transform=axis.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=7,
        )
    axis.set_yticks(list(positions), names, fontsize=7)
    axis.set_xscale("log")
    axis.set_xlabel(unit_label)
    axis.legend(loc="lower left", fontsize=7)


def _named(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose "  the same, ..." names carry the scenario they continue."""
    parent, out = "", []
    for row in rows:
        name = row["scenario"]
        if name.startswith(" "):
            detail = name.strip().removeprefix("the same").strip(" ,") or row["against"]
            name = f"{re.sub(r', (1 call|[0-9]+ concurrent).*$', '', parent)}: {detail}"
        else:
            parent = name
        out.append(row | {"scenario": name})
    return out


def main(source: Path, target: Path) -> None:
    """Draw ``source``'s rows into ``target``."""
    results = json.loads(source.read_text())
    rows = [r for r in _named(results["rows"]) if not r.get("invalid")]
    fast = [r for r in rows if r["unit"] != "ms"]
    slow = [r for r in rows if r["unit"] == "ms"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(16, max(4, 0.45 * len(fast))))
    _bars(left, fast, "per second (log), higher is better")
    _bars(right, slow, "milliseconds (log), lower is better")
    figure.suptitle(results["header"], fontsize=9)
    figure.tight_layout()
    figure.savefig(target, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
