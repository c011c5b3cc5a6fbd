"""``python -m bench.chart RESULTS.json OUT.png``: the benchmark table as pictures.

Run by the bench venv (matplotlib). OUT.png: throughput rows on the left,
latency rows next, hit rates (if any) on the right: the service's median
next to what it is compared with, min-max as error bars, and each ratio with
its goal written beside it. OUT-goals.png: every row with a goal on its
ratio, the median ratio with its min-max against the goal, met or not.
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


def _bars(axis: Any, rows: list[dict[str, Any]], unit_label: str, log: bool = True) -> None:
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
        goal = ""
        if row["goal"]:
            bound = f"{'<=' if row.get('lower_is_better') else '>='} {row['goal']:g}"
            # With "absolute" the goal is on the service's figure itself, not the ratio.
            goal = f" (goal: {bound} {row['unit']})" if row.get("absolute") else f" (goal {bound})"
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
    if log:
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
            trail = r", (1 call|[0-9]+ concurrent|[0-9.]+% writes).*$"
            name = f"{re.sub(trail, '', parent)}: {detail}"
        else:
            parent = name
        out.append(row | {"scenario": name})
    return out


def main(source: Path, target: Path) -> None:
    """Draw ``source``'s rows into ``target``."""
    results = json.loads(source.read_text())
    rows = [r for r in _named(results["rows"]) if not r.get("invalid")]
    fast = [r for r in rows if r["unit"].endswith("/s")]
    slow = [r for r in rows if r["unit"] == "ms"]
    shares = [r for r in rows if r["unit"] == "hit rate"]
    panels = 3 if shares else 2
    height = max(4, 0.45 * max(len(fast), len(slow), len(shares)))
    figure, axes = plt.subplots(1, panels, figsize=(8 * panels, height))
    _bars(axes[0], fast, "per second (log), higher is better")
    _bars(axes[1], slow, "milliseconds (log), lower is better")
    if shares:
        _bars(axes[2], shares, "hit rate, higher is better", log=False)
    figure.suptitle(results["header"], fontsize=9)
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    goals(results["header"], rows, target.with_name(f"{target.stem}-goals.png"))


def goals(header: str, rows: list[dict[str, Any]], target: Path) -> None:
    """Each row with a goal on its ratio: the median ratio (min-max) and the goal's mark."""
    rows = [r for r in rows if r["goal"] and not r.get("absolute")][::-1]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(11, max(3.0, 0.42 * len(rows) + 1)))
    positions = list(range(len(rows)))
    medians = [statistics.median(r["ratios"]) for r in rows]
    met = [
        (m <= r["goal"]) if r.get("lower_is_better") else (m >= r["goal"])
        for m, r in zip(medians, rows, strict=True)
    ]
    axis.barh(
        positions,
        medians,
        height=0.6,
        xerr=[
            [m - min(r["ratios"]) for m, r in zip(medians, rows, strict=True)],
            [max(r["ratios"]) - m for m, r in zip(medians, rows, strict=True)],
        ],
        color=["#2ca02c" if ok else "#d62728" for ok in met],
        capsize=2,
    )
    axis.scatter([r["goal"] for r in rows], positions, marker="|", s=300, color="black", zorder=3)
    for position, median, row in zip(positions, medians, rows, strict=True):
        bound = "<=" if row.get("lower_is_better") else ">="
        axis.text(
            median,
            position,
            f"  {median:.2f} (goal {bound} {row['goal']:g})",
            va="center",
            fontsize=7,
        )
    axis.set_yticks(
        positions, [f"{r['scenario'].strip()} / {r['against']}" for r in rows], fontsize=7
    )
    axis.set_xlabel("ratio: median, min-max; black mark: the goal; green: met, red: not")
    axis.set_title(header, fontsize=9)
    figure.tight_layout()
    figure.savefig(target, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
