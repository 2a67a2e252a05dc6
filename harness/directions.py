"""Ablation directions: does our table order the paper's rows and columns as the paper does?

For each sub-table of a table (e.g. 6a … 6i), every pair of rows within a column and every pair of
columns within a row whose published values differ is one *direction*: which of the two cells is
higher. Our table reproduces a direction when our two cells are ordered the same way; equal values
of ours (a tie) count as a miss. Derived gain columns (``delta_of``) are not compared (their
operands are), and a pair where we lack either cell is counted apart, as not measurable.

This is the figure of issue "the embedded world as a miniature of the paper": a smoke table whose
directions match the paper's predicts what an ablation does at full scale. :func:`directions_across`
puts the tables of several worlds (``bikebench table6 --world-seed N``) side by side: which directions
hold on every world, which on some, which on none (``bikebench directions RESULTS...``).

Each report also breaks the directions down by the paper's gap between the two cells
(:data:`GAP_BANDS`): the paper's ablations are single training runs, so its smallest gaps are of the
size by which two runs of one setting differ, and a direction resting on such a gap is one a smoke
table (384 validation videos, 20 steps) cannot be expected to resolve. Where the runs cached their
scores, each direction also carries a paired test on the validation videos (``DirectionReport.tests``,
:mod:`harness.significance`): resolved the paper's way, against it, or within the noise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

from harness.registry import PaperEntry, Registry, load_registry

if TYPE_CHECKING:  # pragma: no cover
    from harness.significance import PairedTest

#: Upper bounds (points) of the bands of the paper's gap in which :meth:`DirectionReport.by_gap` counts
#: the directions; the last band is everything above the last bound.
GAP_BANDS: tuple[float, ...] = (0.5, 2.0)


def gap_band(gap: float, bands: Sequence[float] = GAP_BANDS) -> str:
    """The label of the band of ``gap`` (points): ``"<= 0.5"``, ``"0.5-2"``, ``"> 2"`` for the default bands."""
    lower = None
    for bound in bands:
        if gap <= bound + 1e-9:
            return f"<= {bound:g}" if lower is None else f"{lower:g}-{bound:g}"
        lower = bound
    return f"> {bands[-1]:g}"


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
    def key(self) -> tuple[str, str, str, str]:
        """What identifies the pair in any table: (sub-table, axis, higher cell, lower cell)."""
        return (self.table, self.axis, self.higher, self.lower)

    @property
    def paper_gap(self) -> float:
        """The paper's margin between the two cells (points, > 0)."""
        return round(self.paper_higher - self.paper_lower, 6)

    def name(self) -> str:
        return f"{self.table}: {self.higher} > {self.lower}"

    @property
    def reproduced(self) -> bool:
        """Ours ordered as the paper's (strictly: a tie is a miss)."""
        return self.measurable and self.ours_higher > self.ours_lower  # type: ignore[operator]

    def describe(self) -> str:
        ours = (f"ours {self.ours_higher:.2f} vs {self.ours_lower:.2f}" if self.measurable else "ours: missing")
        return f"{self.name()} (paper {self.paper_higher:g} vs {self.paper_lower:g}; {ours})"


@dataclass
class DirectionReport:
    """Every direction of the compared tables, and the summary line."""

    directions: list[Direction] = field(default_factory=list)
    #: McNemar's test of each direction on the validation videos (:func:`harness.significance.resolve_directions`)
    tests: dict[tuple[str, str, str, str], "PairedTest"] = field(default_factory=dict)
    #: why some direction is untested (the first reason), when one is
    untested: Optional[str] = None

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

    def by_gap(self, bands: Sequence[float] = GAP_BANDS) -> list[tuple[str, int, int]]:
        """``(band, reproduced, measurable)`` for each band of the paper's gap that holds a direction."""
        counts: dict[str, list[int]] = {}
        for d in sorted(self.measurable, key=lambda d: d.paper_gap):
            c = counts.setdefault(gap_band(d.paper_gap, bands), [0, 0])
            c[0] += d.reproduced
            c[1] += 1
        return [(band, n, m) for band, (n, m) in counts.items()]

    def gap_line(self) -> str:
        """E.g. ``By the paper's gap between the two cells (points): <= 0.5: 3 of 9, 0.5-2: 12 of 16, > 2: 21 of 21.``"""
        parts = [f"{band}: {n} of {m}" for band, n, m in self.by_gap()]
        return "By the paper's gap between the two cells (points): " + ", ".join(parts) + "." if parts else ""

    def resolution(self) -> dict[str, int]:
        """How many tested directions each verdict of :class:`harness.significance.PairedTest` holds
        (``paper``, ``against``, ``noise``), and how many measurable ones are ``untested``."""
        out = {"paper": 0, "against": 0, "noise": 0, "untested": 0}
        for d in self.measurable:
            test = self.tests.get(d.key)
            out["untested" if test is None else test.verdict] += 1
        return out

    def resolution_line(self) -> str:
        """E.g. ``On the 384 validation videos (McNemar's exact test, α = 0.05): 30 directions resolved the
        paper's way, 3 against it, 13 within the noise.``; empty when nothing was tested."""
        if not self.tests:
            return ""
        from harness.significance import ALPHA

        r = self.resolution()
        videos = sorted({t.n_videos for t in self.tests.values()})
        on = (f"the {videos[0]} validation video{'' if videos[0] == 1 else 's'}" if len(videos) == 1
              else "the validation videos")
        line = (f"On {on} (McNemar's exact test, α = {ALPHA:g}): {r['paper']} direction(s) resolved the paper's way, "
                f"{r['against']} against it, {r['noise']} within the noise")
        if r["untested"]:
            line += f"; {r['untested']} untested ({self.untested})"
        return line + "."

    def describe(self, d: Direction) -> str:
        """:meth:`Direction.describe`, with its test when it has one."""
        test = self.tests.get(d.key)
        text = d.describe()
        return text if test is None else f"{text[:-1]}; {test.describe()})"

    def to_markdown(self) -> str:
        lines = [f"## {self.headline()}", "",
                 "Each pair of rows within a column and of columns within a row whose published values differ; "
                 "ours reproduces the pair when it orders the two cells the same way (a tie is a miss)."]
        if self.total:
            lines += ["", self.gap_line()]
        if self.tests:
            lines += ["", self.resolution_line()]
        elif self.untested:
            lines += ["", f"Not tested on the validation videos: {self.untested}"]
        if self.misses:
            lines += ["", "Missed:", ""] + [f"- {self.describe(d)}" for d in self.misses]
        unmeasured = len(self.directions) - self.total
        if unmeasured:
            lines += ["", f"{unmeasured} more direction(s) need a cell we do not have at this scale."]
        return "\n".join(lines) + "\n"

    def metrics(self) -> dict[str, float]:
        """What the MLflow parent run of a table logs: the figure, and the reproduced share of each gap band
        (``ablation_directions_gap_le0.5_share``, ``..._gap_0.5-2_share``, ``..._gap_gt2_share``, in %)."""
        out = {"ablation_directions_reproduced": float(self.reproduced), "ablation_directions_total": float(self.total),
               "ablation_directions_share": 100.0 * (self.share or 0.0)}
        for band, n, m in self.by_gap():
            slug = band.replace("<= ", "le").replace("> ", "gt")
            out[f"ablation_directions_gap_{slug}_share"] = 100.0 * n / m
        if self.tests:
            r = self.resolution()
            out["ablation_directions_resolved_paper"] = float(r["paper"])
            out["ablation_directions_resolved_against"] = float(r["against"])
            out["ablation_directions_within_noise"] = float(r["noise"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"reproduced": self.reproduced, "total": self.total, "share": self.share,
                "unmeasured": len(self.directions) - self.total,
                "by_paper_gap": [{"band": b, "reproduced": n, "total": m} for b, n, m in self.by_gap()],
                "misses": [{**asdict(d), "reproduced": False,
                            **({"test": self.tests[d.key].to_dict()} if d.key in self.tests else {})} for d in self.misses],
                "resolution": self.resolution() if self.tests else None,
                "tests": [{"table": d.table, "axis": d.axis, "higher": d.higher, "lower": d.lower,
                           "reproduced": d.reproduced, **self.tests[d.key].to_dict()}
                          for d in self.measurable if d.key in self.tests]}


def _published(registry: Registry, tables: Iterable[str]) -> dict[str, list[PaperEntry]]:
    wanted = set(tables)
    out: dict[str, list[PaperEntry]] = {}
    for e in registry:
        if e.table in wanted and not e.is_gain and e.profile == "official" and not e.approx:
            out.setdefault(e.table, []).append(e)
    return out


def table6_cells(results: Iterable[Any]) -> list[dict[str, Any]]:
    """The Table 6 cells (sub-tables ``6a`` … ``6i``, gain columns left out) of loaded results
    (:class:`harness.cells.ResultCell`, e.g. from :func:`harness.check.load_results`) as the dicts
    :func:`ablation_directions` reads."""
    return [{"table": c.table, "row": c.row, "column": c.column, "value": c.value, "variant": c.variant,
             "run_id": c.run_id, "metric": c.metric}
            for c in results if str(c.table).startswith("6") and not c.derived]


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


@dataclass
class WorldTable:
    """One world's Table 6 and its directions."""

    label: str  # e.g. "seed 1"
    source: str  # the results file or directory it was read from
    world: Optional[dict[str, Any]]  # table6_results.json's world identity (seed, config hash, checkpoint)
    report: DirectionReport


@dataclass
class WorldsReport:
    """The directions of several worlds' Table 6 side by side (:func:`directions_across`)."""

    worlds: list[WorldTable]

    @property
    def reproduced(self) -> int:
        return sum(w.report.reproduced for w in self.worlds)

    @property
    def total(self) -> int:
        return sum(w.report.total for w in self.worlds)

    @property
    def share(self) -> Optional[float]:
        return None if self.total == 0 else self.reproduced / self.total

    def headline(self) -> str:
        pct = "" if self.share is None else f" ({100 * self.share:.0f} %)"
        n = len(self.worlds)
        # tables of one world (the same identity: seed, config, checkpoint) differ by their training seed
        identities = {json.dumps(w.world, sort_keys=True, default=str) if w.world else w.source for w in self.worlds}
        k = len(identities)
        where = (f"{n} world{'' if n == 1 else 's'}" if k == n
                 else f"{n} tables of {k} world{'' if k == 1 else 's'}")
        return f"Ablation directions on {where}: {self.reproduced} of {self.total} reproduced{pct}"

    def rows(self) -> list[tuple[Direction, list[Optional[Direction]]]]:
        """Every direction measurable on some world, with each world's (None: not measurable there)."""
        order: dict[tuple[str, str, str, str], Direction] = {}
        per_world: list[dict[tuple[str, str, str, str], Direction]] = []
        for w in self.worlds:
            mine = {d.key: d for d in w.report.measurable}
            per_world.append(mine)
            for key, d in mine.items():
                order.setdefault(key, d)
        return [(d, [mine.get(key) for mine in per_world]) for key, d in order.items()]

    def steadiness(self) -> dict[str, int]:
        """How many directions hold on every world, on some, on none (among those measurable everywhere)."""
        out = {"every": 0, "some": 0, "none": 0}
        for _, cells in self.rows():
            if any(c is None for c in cells):
                continue
            n = sum(c.reproduced for c in cells)  # type: ignore[union-attr]
            out["every" if n == len(cells) else "none" if n == 0 else "some"] += 1
        return out

    def by_gap(self, bands: Sequence[float] = GAP_BANDS) -> list[tuple[str, int, int, int, int]]:
        """``(band, directions, on every world, reproduced, measurable)`` per band of the paper's gap, the last
        two summed over the worlds."""
        acc: dict[str, list[int]] = {}
        for d, cells in sorted(self.rows(), key=lambda r: r[0].paper_gap):
            a = acc.setdefault(gap_band(d.paper_gap, bands), [0, 0, 0, 0])
            present = [c for c in cells if c is not None]
            a[0] += 1
            a[1] += len(present) == len(cells) and all(c.reproduced for c in present)
            a[2] += sum(c.reproduced for c in present)
            a[3] += len(present)
        return [(band, *v) for band, v in acc.items()]  # type: ignore[misc]

    def resolved_against(self) -> list[tuple[Direction, list[str]]]:
        """The directions some world resolves against the paper (:mod:`harness.significance`), with those
        worlds' labels; most worlds first. These are the misses the validation videos vouch for."""
        out = []
        for d, cells in self.rows():
            labels = [w.label for c, w in zip(cells, self.worlds)
                      if c is not None and (t := w.report.tests.get(c.key)) is not None and t.verdict == "against"]
            if labels:
                out.append((d, labels))
        return sorted(out, key=lambda r: -len(r[1]))

    def to_markdown(self) -> str:
        s = self.steadiness()
        lines = [f"# {self.headline()}", "",
                 "Each world's Table 6 against the paper's directions (`harness.directions`: a pair of rows within a "
                 "column or of columns within a row whose published values differ; a tie is a miss).", "",
                 "| world | results | reproduced | resolved the paper's way / against / within the noise |", "|---|---|---|---|"]
        for w in self.worlds:
            r = w.report.resolution()
            tested = (f"{r['paper']} / {r['against']} / {r['noise']}" + (f" ({r['untested']} untested)" if r["untested"] else "")
                      if w.report.tests else f"untested ({w.report.untested or 'no run caches'})")
            lines.append(f"| {w.label} | `{w.source}` | {w.report.reproduced} of {w.report.total} | {tested} |")
        from harness.significance import ALPHA

        lines += ["", "Resolved: McNemar's exact test on the validation videos each cell was scored on (the videos only "
                      f"one of the two cells gets right), p < {ALPHA:g} (`harness.significance`); within the noise, the videos "
                      "cannot tell the two cells apart, and a miss there says nothing about the method."]
        against = self.resolved_against()
        if against:
            lines += ["", f"Resolved against the paper on some world ({len(against)}): "
                      + "; ".join(f"{d.name()} ({', '.join(labels)})" for d, labels in against) + "."]
        lines += ["", f"Directions measurable on every world: {sum(s.values())}; reproduced on every world {s['every']}, "
                      f"on some {s['some']}, on none {s['none']}.", "",
                  "By the paper's gap between the two cells (points):", "",
                  "| paper gap | directions | on every world | reproduced (all worlds) |", "|---|---|---|---|"]
        for band, n, every, rep, meas in self.by_gap():
            lines.append(f"| {band} | {n} | {every} | {rep} of {meas} |")
        missed = [(d, cells) for d, cells in self.rows() if any(c is None or not c.reproduced for c in cells)]
        if missed:
            missed.sort(key=lambda r: sum(c is not None and c.reproduced for c in r[1]))
            lines += ["", f"Missed on at least one world ({len(missed)}; fewest worlds first):", "",
                      "| direction | paper | " + " | ".join(w.label for w in self.worlds) + " |",
                      "|---|---|" + "---|" * len(self.worlds)]
            for d, cells in missed:
                ours = [("–" if c is None else f"{c.ours_higher:.2f} vs {c.ours_lower:.2f} "
                         f"{'yes' if c.reproduced else 'tie' if c.ours_higher == c.ours_lower else 'no'}"
                         + _p_note(w.report.tests.get(c.key)))
                        for c, w in zip(cells, self.worlds)]
                lines.append(f"| {d.name()} | {d.paper_higher:g} vs {d.paper_lower:g} | " + " | ".join(ours) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reproduced": self.reproduced, "total": self.total, "share": self.share, "steadiness": self.steadiness(),
            "worlds": [{"label": w.label, "source": w.source, "world": w.world, **w.report.to_dict()} for w in self.worlds],
            "resolved_against": [{"table": d.table, "axis": d.axis, "higher": d.higher, "lower": d.lower, "worlds": labels}
                                 for d, labels in self.resolved_against()],
            "by_paper_gap": [{"band": b, "directions": n, "on_every_world": e, "reproduced": r, "total": m}
                             for b, n, e, r, m in self.by_gap()],
            "directions": [{"table": d.table, "axis": d.axis, "higher": d.higher, "lower": d.lower,
                            "paper_higher": d.paper_higher, "paper_lower": d.paper_lower,
                            "ours": [None if c is None else {"higher": c.ours_higher, "lower": c.ours_lower,
                                                            "reproduced": c.reproduced,
                                                            "test": _test_dict(w.report.tests.get(c.key))}
                                     for c, w in zip(cells, self.worlds)]}
                           for d, cells in self.rows()],
        }


def _p_note(test: Optional["PairedTest"]) -> str:
    """`` (p 0.012)`` after a world's cell of the missed table; nothing when untested."""
    if test is None:
        return ""
    return " (p < 0.001)" if test.p_value < 0.001 else f" (p {test.p_value:.3f})"


def _test_dict(test: Optional["PairedTest"]) -> Optional[dict[str, Any]]:
    return None if test is None else test.to_dict()


def _world_label(world: Optional[Mapping[str, Any]], source: str, train_seeds: Optional[Sequence[int]] = None) -> str:
    """``seed N`` (the world's), with ``, training seed S`` where the runs trained with another seed than 0
    (``table6_results.json``'s ``train_seeds``): one world's tables of several training seeds side by side
    show which directions the training seed alone flips."""
    if not world or world.get("seed") is None:
        return source
    label = f"seed {world['seed']}"
    if train_seeds and list(train_seeds) != [0]:
        label += f", training seed{'' if len(train_seeds) == 1 else 's'} {', '.join(str(s) for s in train_seeds)}"
    return label


def directions_across(sources: Sequence[Any], registry: Optional[Registry] = None) -> WorldsReport:
    """The directions of each of ``sources`` (results directories written by ``bikebench table6``, or their
    ``table6_results.json``), side by side. Worlds are labelled by their seed; two results of worlds with one
    seed but another config (``--set``) or checkpoint are told apart by their config hash, then by their path.
    Raises :class:`harness.cells.CheckError` naming the file when one cannot be read."""
    from pathlib import Path

    from harness.cells import CheckError
    from harness.check import load_results, results_train_seeds, results_world
    from harness.significance import resolve_directions

    if not sources:
        raise CheckError("directions: no results given; expected results directories written by `bikebench table6`")
    registry = registry if registry is not None else load_registry()
    worlds: list[WorldTable] = []
    for source in sources:
        if not Path(source).exists():
            raise CheckError(f"{source}: no such results directory or file; expected a directory written by "
                             "`bikebench table6` (it holds table6_results.json) or that file")
        cells = table6_cells(load_results(source))
        world = results_world(source)
        report = ablation_directions(cells, registry)
        resolve_directions(report, cells, source, strict=False)
        worlds.append(WorldTable(_world_label(world, str(source), results_train_seeds(source)), str(source), world, report))
    labels = [w.label for w in worlds]
    for w in worlds:
        if labels.count(w.label) > 1 and w.world and w.world.get("config_hash"):
            w.label = f"{w.label} ({w.world['config_hash']})"
    labels = [w.label for w in worlds]
    for w in worlds:
        if labels.count(w.label) > 1:
            w.label = f"{w.label} ({Path(w.source)})"
    return WorldsReport(worlds)
