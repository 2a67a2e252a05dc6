"""Is a direction of our table resolved, or within the noise of its validation videos?

Two cells of one table are two classifiers scored on the same validation videos, so whether their
order is more than chance is a paired question: McNemar's exact test on the videos one cell gets
right and the other wrong (``b``: only the paper's higher cell right; ``c``: only the lower one).
Under "no difference" ``b ~ Binomial(b + c, 1/2)``; the two-sided p-value is
``min(1, 2 · Σ_{i ≤ min(b, c)} C(b + c, i) / 2^(b + c))``, and 1 when ``b + c = 0``. A direction is

- ``paper``: ours orders the two cells the paper's way and p < α (resolved, reproduced);
- ``against``: ours orders them the other way and p < α (resolved, a real miss);
- ``noise``: p ≥ α, ties included (the validation videos cannot tell the two cells apart).

The per-video hits come from the runs' cached scores (``<results>/runs/<run_id>/cache/<eval.split>/``,
:func:`harness.tuning.load_score_cache`): ``video_top1``/``_top5`` from the video scores, ``attr_top1``/``_top5``
from the attribute scores, ``fused_top1``/``_top5`` from the two fused at the run's own λ and transform
(:class:`harness.tuning.FusionProblem`, evaluation's fusion). Each recomputed cell must equal the
table's value: a cache that does not is named (an error, or the reason the cell is untested), never a
silent test of other numbers.

``bikebench table6`` and ``bikebench directions`` attach these tests to their direction reports
(:func:`resolve_directions`): a smoke table's miss that is ``noise`` says nothing about the method; one
that is ``against`` does, and a change that turns a ``paper`` direction into ``against`` is an alarm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from harness.directions import DirectionReport

#: Significance level of :attr:`PairedTest.verdict`.
ALPHA = 0.05
#: The cell metrics a per-video hit can be recomputed for: (the scores, k of the top-k hit).
HIT_METRICS = {f"{kind}_top{k}": (kind, k) for kind in ("video", "attr", "fused") for k in (1, 5)}
VERDICTS = ("paper", "against", "noise")


class SignificanceError(ValueError):
    """A run's cache contradicts the table it is meant to explain (names the file and both values)."""


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` against ``c`` discordant pairs (1.0 when there are none)."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_p: counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2.0 * tail / 2.0 ** n)


@dataclass(frozen=True)
class PairedTest:
    """The paired test of one direction: the paper's ``higher`` cell against its ``lower`` one."""

    n_videos: int
    higher_only: int  # videos only the paper's higher cell gets right
    lower_only: int  # videos only the paper's lower cell gets right
    p_value: float

    @property
    def verdict(self) -> str:
        """``paper`` / ``against`` (resolved at :data:`ALPHA`) or ``noise``."""
        if self.p_value < ALPHA and self.higher_only != self.lower_only:
            return "paper" if self.higher_only > self.lower_only else "against"
        return "noise"

    def describe(self) -> str:
        """E.g. ``12 vs 31 videos, p = 0.005: resolved against the paper``."""
        p = "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.3f}"
        what = {"paper": "resolved the paper's way", "against": "resolved against the paper",
                "noise": "within the noise"}[self.verdict]
        return f"{self.higher_only} vs {self.lower_only} videos, {p}: {what}"

    def to_dict(self) -> dict[str, Any]:
        return {"n_videos": self.n_videos, "higher_only": self.higher_only, "lower_only": self.lower_only,
                "p_value": self.p_value, "verdict": self.verdict}


@dataclass(frozen=True)
class CellHits:
    """Per-video top-k hits of one cell: ``hits[i]`` for ``video_ids[i]``."""

    video_ids: tuple[str, ...]
    hits: np.ndarray  # [N] bool
    source: str  # the cache directory they were recomputed from


def paired_test(higher: CellHits, lower: CellHits) -> PairedTest:
    """McNemar's exact test of two cells scored on the same videos (joined by video id, never by row)."""
    if set(higher.video_ids) != set(lower.video_ids) or len(higher.video_ids) != len(lower.video_ids):
        raise SignificanceError(
            f"{higher.source} and {lower.source}: the two cells were scored on different videos "
            f"({len(higher.video_ids)} and {len(lower.video_ids)}); a paired test needs the same videos")
    row = {v: i for i, v in enumerate(lower.video_ids)}
    other = lower.hits[[row[v] for v in higher.video_ids]]
    b = int(np.count_nonzero(higher.hits & ~other))
    c = int(np.count_nonzero(~higher.hits & other))
    return PairedTest(len(higher.video_ids), b, c, mcnemar_p(b, c))


class _HitReader:
    """Recomputes cells' per-video hits from their runs' caches (each run's cache read once)."""

    def __init__(self, results: Path):
        self.results = results
        self._caches: dict[str, Any] = {}

    def _cache(self, run_id: str) -> Any:
        from bike.config import RunConfig
        from bike.rundir import CONFIG_FILE
        from harness.rundir import RunDir
        from harness.tuning import load_score_cache

        if run_id not in self._caches:
            run_dir = RunDir.for_run(self.results, run_id).path
            if not (run_dir / CONFIG_FILE).is_file():
                raise FileNotFoundError(f"{run_dir / CONFIG_FILE}: no such run configuration")
            config = RunConfig.from_yaml(run_dir / CONFIG_FILE)
            self._caches[run_id] = load_score_cache(run_dir, config.eval.split)
        return self._caches[run_id]

    def hits(self, cell: Mapping[str, Any]) -> CellHits:
        from bike.metrics import topk_accuracy_rows
        from harness.tuning import FusionProblem

        where = f"cell {cell['table']}/{cell['row']}/{cell['column']}"
        kind, k = HIT_METRICS.get(str(cell.get("metric")), (None, 1))
        if kind is None or not cell.get("run_id"):
            raise LookupError(f"{where}: metric {cell.get('metric')!r} of run {cell.get('run_id')!r} has no per-video "
                              f"hits (expected one of {sorted(HIT_METRICS)} and a run id)")
        cache = self._cache(str(cell["run_id"]))
        labels = np.asarray(cache.labels)
        if labels.ndim != 1:
            raise LookupError(f"{cache.directory}: multi-label targets; a top-k hit needs one class per video")
        keep = np.flatnonzero(labels >= 0)
        if kind == "fused":
            config = cache.config
            scores = FusionProblem(cache, default_transform=config.fusion.transform).fused(config.fusion_lambda)
        else:
            array = cache.video_scores if kind == "video" else cache.attr_scores
            if array is None:
                raise LookupError(f"{cache.directory}: no {kind} scores cached")
            scores = np.asarray(array, dtype=np.float64)[keep]
        hits = topk_accuracy_rows(np.asarray(scores, dtype=np.float64), labels[keep].astype(np.int64), k)
        value = 100.0 * float(hits.mean()) if hits.size else float("nan")
        if not math.isclose(value, float(cell["value"]), rel_tol=0.0, abs_tol=1e-6):
            raise SignificanceError(
                f"{cache.directory}: {where} (run {cell['run_id']}, {cell['metric']}) recomputes to {value:.6f} from the "
                f"cached scores but the table gives {float(cell['value']):.6f}; the cache is not the run's evaluation")
        ids = tuple(str(cache.video_ids[i]) for i in keep)
        return CellHits(ids, hits, str(cache.directory))


def results_dir_of(source: str | Path) -> Path:
    """The results directory of a results source: the directory itself, or the one holding the file."""
    return Path(source) if Path(source).is_dir() else Path(source).parent


def resolve_directions(report: "DirectionReport", cells: Sequence[Mapping[str, Any]], results: str | Path,
                       strict: bool = True) -> "DirectionReport":
    """Attach a :class:`PairedTest` to every measurable direction of ``report`` whose two cells' runs are
    cached under ``results`` (a results directory, or a results file in one; ``report.tests``, keyed by
    :attr:`harness.directions.Direction.key`).

    A direction whose cells cannot be recomputed (no run id, no cache, a multi-label run) is left
    untested, the first reason in ``report.untested``. A cache that contradicts its cell raises
    :class:`SignificanceError`; with ``strict=False`` it leaves every direction untested instead, the
    contradiction as the reason (a table is still written). Returns ``report``.
    """
    if not strict:
        try:
            return resolve_directions(report, cells, results)
        except SignificanceError as exc:
            report.tests.clear()
            report.untested = str(exc)
            return report
    from harness.rundir import runs_root

    results = results_dir_of(results)
    if not runs_root(results).is_dir():
        report.untested = f"{runs_root(results)}: no run directories (their cached scores give the tests)"
        return report
    by_key = {(str(c["table"]), str(c["row"]), str(c["column"])): c
              for c in cells if c.get("value") is not None and not c.get("variant")}
    reader = _HitReader(results)
    hits: dict[tuple[str, str, str], Optional[CellHits]] = {}

    def cell_hits(table: str, name: str) -> Optional[CellHits]:
        row, column = name.split("/", 1)
        key = (table, row, column)
        if key not in hits:
            try:
                hits[key] = reader.hits(by_key[key])
            except SignificanceError:
                raise
            except (LookupError, OSError, ValueError) as exc:  # no run, no cache, an unreadable cache (CacheError)
                hits[key] = None
                if report.untested is None:
                    report.untested = str(exc)
        return hits[key]

    for d in report.measurable:
        hi, lo = cell_hits(d.table, d.higher), cell_hits(d.table, d.lower)
        if hi is not None and lo is not None:
            report.tests[d.key] = paired_test(hi, lo)
    return report


# ------------------------------------------------------------------ two tables of one world, cell by cell
@dataclass(frozen=True)
class CellChange:
    """One cell in two tables of the same world: ``before`` and ``after`` a change, and their paired test
    (``test.higher_only``: videos only ``after`` gets right; ``lower_only``: only ``before``)."""

    key: str  # table/row/column[#variant]
    before: float
    after: float
    test: Optional[PairedTest] = None
    reason: Optional[str] = None  # why untested

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` (resolved at :data:`ALPHA`), ``noise``, or ``untested``."""
        if self.test is None:
            return "untested"
        return {"paper": "better", "against": "worse", "noise": "noise"}[self.test.verdict]


@dataclass
class TableComparison:
    """Every cell two tables share, tested on the videos both scored (:func:`compare_tables`)."""

    before: str
    after: str
    changes: list[CellChange]
    only_before: list[str]
    only_after: list[str]

    def counts(self) -> dict[str, int]:
        out = {"better": 0, "worse": 0, "noise": 0, "untested": 0}
        for c in self.changes:
            out[c.verdict] += 1
        return out

    def headline(self) -> str:
        n = self.counts()
        return (f"{len(self.changes)} cell(s): {n['better']} better, {n['worse']} worse (McNemar's exact test, p < {ALPHA:g}), "
                f"{n['noise']} within the noise" + (f", {n['untested']} untested" if n["untested"] else ""))

    def to_markdown(self) -> str:
        lines = [f"# `{self.after}` against `{self.before}`", "", self.headline() + ".", "",
                 "Each cell of both tables, tested on the validation videos it was scored on (the videos only one of "
                 "the two versions gets right; `harness.significance`).", "",
                 "| cell | before | after | Δ | videos only after / only before | p | verdict |",
                 "|---|---|---|---|---|---|---|"]
        order = {"worse": 0, "better": 1, "noise": 2, "untested": 3}
        for c in sorted(self.changes, key=lambda c: (order[c.verdict], c.key)):
            if c.test is None:
                videos, p = "–", "–"
            else:
                videos = f"{c.test.higher_only} / {c.test.lower_only}"
                p = "< 0.001" if c.test.p_value < 0.001 else f"{c.test.p_value:.3f}"
            verdict = c.verdict if c.reason is None else f"untested: {c.reason}"
            lines.append(f"| {c.key} | {c.before:.2f} | {c.after:.2f} | {c.after - c.before:+.2f} | {videos} | {p} | {verdict} |")
        for label, keys in (("Only in the first table", self.only_before), ("Only in the second table", self.only_after)):
            if keys:
                lines += ["", f"{label} ({len(keys)}): " + ", ".join(keys) + "."]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "counts": self.counts(),
                "cells": [{"key": c.key, "before": c.before, "after": c.after, "verdict": c.verdict, "reason": c.reason,
                           "test": None if c.test is None else c.test.to_dict()} for c in self.changes],
                "only_before": self.only_before, "only_after": self.only_after}


def compare_tables(before: str | Path, after: str | Path) -> TableComparison:
    """The cells of two results (directories written by ``bikebench table6`` / ``table`` / ``paper``, or their
    results files) of one world, each tested on the videos both versions scored.

    Refuses (:class:`harness.cells.CheckError`) results of two different worlds: their cells differ for
    reasons that are not the change. A cell whose cache cannot be read, or contradicts it, is untested,
    with the reason.
    """
    from harness.cells import CheckError
    from harness.check import load_results, results_world, world_mismatch

    for source in (before, after):
        if not Path(source).exists():
            raise CheckError(f"{source}: no such results directory or file; expected one written by `bikebench table6`, "
                             "`bikebench table` or `bikebench paper`")
    mismatch = world_mismatch(results_world(after), results_world(before))
    if mismatch is not None:
        raise CheckError(f"not comparing {after} with {before}: {mismatch.replace('baseline', 'first table')}")
    cells_before = {c.key: c for c in load_results(before) if not c.derived}
    cells_after = {c.key: c for c in load_results(after) if not c.derived}
    readers = (_HitReader(results_dir_of(before)), _HitReader(results_dir_of(after)))
    changes: list[CellChange] = []
    for key in [k for k in cells_after if k in cells_before]:
        a, b = cells_before[key].model_dump(), cells_after[key].model_dump()
        try:
            hits_before, hits_after = readers[0].hits(a), readers[1].hits(b)
            test: Optional[PairedTest] = paired_test(hits_after, hits_before)
            reason = None
        except (LookupError, OSError, ValueError) as exc:  # SignificanceError included: that cell only is untested
            test, reason = None, str(exc)
        changes.append(CellChange(key, float(a["value"]), float(b["value"]), test, reason))
    return TableComparison(str(before), str(after), changes,
                           [k for k in cells_before if k not in cells_after], [k for k in cells_after if k not in cells_before])
