"""Ablation directions: does our table order the paper's rows and columns as the paper does?

For each sub-table of a table (e.g. 6a … 6i), every pair of rows within a column and every pair of
columns within a row whose published values differ is one *direction*: which of the two cells is
higher. Our table reproduces a direction when our two cells are ordered the same way; equal values
of ours (a tie) count as a miss. Derived gain columns (``delta_of``) are not compared (their
operands are), and a pair where we lack either cell is counted apart, as not measurable.

This is the figure of issue "the embedded world as a miniature of the paper": a smoke table whose
directions match the paper's predicts what an ablation does at full scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Iterable, Mapping, Optional, Sequence

from harness.registry import PaperEntry, Registry, load_registry


@dataclass(frozen=True)
class Direction:
    """One ordered pair of paper cells: ``higher`` beats ``lower`` in the paper."""

    table: str
    axis: str  # "column" (two rows of one column) or "row" (two columns of one row)
    higher: str  # "row/column" of the cell the paper prints higher
    lower: str
    paper_higher: float
    paper_lower: float
    ours_higher: Optional[float] = None
    ours_lower: Optional[float] = None

    @property
    def measurable(self) -> bool:
        return self.ours_higher is not None and self.ours_lower is not None

    @property
    def reproduced(self) -> bool:
        """Ours ordered as the paper's (strictly: a tie is a miss)."""
        return self.measurable and self.ours_higher > self.ours_lower  # type: ignore[operator]

    def describe(self) -> str:
        ours = (f"ours {self.ours_higher:.2f} vs {self.ours_lower:.2f}" if self.measurable else "ours: missing")
        return (f"{self.table}: {self.higher} > {self.lower} (paper {self.paper_higher:g} vs {self.paper_lower:g}; {ours})")


@dataclass
class DirectionReport:
    """Every direction of the compared tables, and the summary line."""

    directions: list[Direction] = field(default_factory=list)

    @property
    def measurable(self) -> list[Direction]:
        return [d for d in self.directions if d.measurable]

    @property
    def reproduced(self) -> int:
        return sum(d.reproduced for d in self.directions)

    @property
    def total(self) -> int:
        """M: the directions both of whose cells we have."""
        return len(self.measurable)

    @property
    def misses(self) -> list[Direction]:
        return [d for d in self.measurable if not d.reproduced]

    @property
    def share(self) -> Optional[float]:
        return None if self.total == 0 else self.reproduced / self.total

    def headline(self) -> str:
        pct = "" if self.share is None else f" ({100 * self.share:.0f} %)"
        return f"Ablation directions: {self.reproduced} of {self.total} reproduced{pct}"

    def to_markdown(self) -> str:
        lines = [f"## {self.headline()}", "",
                 "Each pair of rows within a column and of columns within a row whose published values differ; "
                 "ours reproduces the pair when it orders the two cells the same way (a tie is a miss)."]
        if self.misses:
            lines += ["", "Missed:", ""] + [f"- {d.describe()}" for d in self.misses]
        unmeasured = len(self.directions) - self.total
        if unmeasured:
            lines += ["", f"{unmeasured} more direction(s) need a cell we do not have at this scale."]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"reproduced": self.reproduced, "total": self.total, "share": self.share,
                "unmeasured": len(self.directions) - self.total,
                "misses": [{**asdict(d), "reproduced": False} for d in self.misses]}


def _published(registry: Registry, tables: Iterable[str]) -> dict[str, list[PaperEntry]]:
    wanted = set(tables)
    out: dict[str, list[PaperEntry]] = {}
    for e in registry:
        if e.table in wanted and not e.is_gain and e.profile == "official" and not e.approx:
            out.setdefault(e.table, []).append(e)
    return out


def ablation_directions(
    cells: Sequence[Mapping[str, Any]],
    registry: Optional[Registry] = None,
    tables: Optional[Iterable[str]] = None,
) -> DirectionReport:
    """The directions of ``tables`` (default: every table ``6a`` … ``6i`` of the registry) and
    whether ``cells`` (``{table, row, column, value}`` dicts, e.g. ``table6_results.json``'s
    cells) reproduce them."""
    registry = registry if registry is not None else load_registry()
    if tables is None:
        tables = [t for t in registry.tables() if t.startswith("6")]
    ours = {(str(c["table"]), str(c["row"]), str(c["column"])): float(c["value"])
            for c in cells if c.get("value") is not None and not c.get("variant")}
    report = DirectionReport()
    for table, entries in _published(registry, tables).items():
        by_column: dict[str, list[PaperEntry]] = {}
        by_row: dict[str, list[PaperEntry]] = {}
        for e in entries:
            by_column.setdefault(e.column, []).append(e)
            by_row.setdefault(e.row, []).append(e)
        for axis, groups in (("column", by_column), ("row", by_row)):
            for group in groups.values():
                for a, b in combinations(group, 2):
                    if a.value == b.value:
                        continue
                    hi, lo = (a, b) if a.value > b.value else (b, a)
                    report.directions.append(Direction(
                        table, axis, f"{hi.row}/{hi.column}", f"{lo.row}/{lo.column}", hi.value, lo.value,
                        ours.get((table, hi.row, hi.column)), ours.get((table, lo.row, lo.column))))
    return report
