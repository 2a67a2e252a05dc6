"""``bikebench check``: regression of our results against the paper and against a blessed baseline.

Results file (``results/table6_results.json``, written by the table6 runner): a JSON (or YAML) list
of cell dicts, or an object ``{"scale": "smoke", "cells": [...]}`` whose ``scale`` applies to cells
that give none. A cell::

    {"table": "6a", "row": "mean_pool", "column": "top1", "value": 41.2,
     "std": null, "scale": "smoke", "run_id": "3f2a...", "metric": "top1", "variant": null}

``value`` is in percentage points (as the paper prints). ``variant`` (optional) tells apart several
results for one paper cell (e.g. ``"paper"`` for the paper-formula profile); the cell key is
``table/row/column`` plus ``#variant`` when given.

Baseline file (``results/baselines/table6_smoke.json``, written by :func:`write_baseline`)::

    {"schema": "bikebench.baseline/1", "created": "...", "meta": {"world": {...}, ...},
     "cells": {"6a/mean_pool/top1": {"value": 41.2, "metric": "top1", "run_id": "...",
                                     "tol": 1.3, "seed_std": 0.65, "seeds": 3}, ...}}

``meta.world`` is the identity of the world the cells come from (seed, config hash, checkpoint
SHA-256); results of another world are refused, not compared. ``tol`` is the cell's own tolerance,
measured when blessing (``--spread``: the same table at other training seeds): :data:`SPREAD_K`
times the standard deviation of the cell over the seeds (``seed_std``, ``seeds`` values); an explicit
tolerance (option or file) overrides it, and a cell without one gets the default.

A plain mapping ``{"6a/mean_pool/top1": 41.2, ...}`` (JSON or YAML) is accepted too.

Tolerances: a number (points), or a :class:`Tolerances` (default, per metric, per table, per cell;
direction rule), or a YAML file with ``paper:`` and/or ``baseline:`` sections holding such mappings.
Direction rule per metric: ``decrease`` (default for accuracy-like metrics: only a drop beyond the
tolerance is a regression, a rise beyond it is reported as ``improved``), ``increase`` (cost metrics
such as GFLOPs) or ``both`` (any change beyond the tolerance is a regression).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, TextIO, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# The cells live in harness.cells (shared with harness.tables); re-exported for ``from harness.check import``.
from harness.cells import FULL_SCALE, CheckError, ResultCell, coerce_results, derive_gain_cells  # noqa: F401
from harness.registry import Registry, load_registry

DEFAULT_RESULTS = Path("results/table6_results.json")
DEFAULT_BASELINE = Path("results/baselines/table6_smoke.json")
DEFAULT_PAPER_TOLERANCE = 0.5  # points: the paper prints one decimal; a full-scale rerun should land within it
DEFAULT_BASELINE_TOLERANCE = 1.0  # points: CPU nondeterminism of smoke runs (thread scheduling, BLAS order)
BASELINE_SCHEMA = "bikebench.baseline/1"
#: A blessed cell's tolerance is this many standard deviations of its value over training seeds.
SPREAD_K = 2.0
#: Key suffix of the row that checks a cell's printed ± std.
STD_SUFFIX = ":std"
# Comparisons are made on rounded deltas so that 0.1 + 0.4 == 0.5 stays within a 0.5 tolerance.
_EPS = 1e-9

Direction = Literal["decrease", "increase", "both"]
Status = Literal["ok", "regression", "improved", "missing", "no_reference"]
STATUSES: tuple[Status, ...] = ("ok", "regression", "improved", "missing", "no_reference")
LOWER_IS_BETTER = frozenset({"gflops_per_view", "params_m"})


ResultsLike = Union[str, Path, Sequence[Union[ResultCell, Mapping[str, Any]]]]


def _read_structured(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckError(f"{path}: file not found") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CheckError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {exc}") from None


def load_results(source: ResultsLike = DEFAULT_RESULTS) -> list[ResultCell]:
    """Our results from a file (JSON/YAML list, or ``{"scale": .., "cells": [..]}``) or a list of dicts."""
    if not isinstance(source, (str, Path)):
        return coerce_results(source)
    path = Path(source)
    if path.is_dir():  # a results directory: the table it holds
        if not (path / DEFAULT_RESULTS.name).is_file():
            raise CheckError(f"{path}: a directory without {DEFAULT_RESULTS.name}; expected a results file or a results "
                             "directory written by `bikebench table6`")
        path = path / DEFAULT_RESULTS.name
    data = _read_structured(path)
    scale = None
    if isinstance(data, Mapping):
        if "cells" not in data:
            raise CheckError(f"{path}: expected a list of cells or an object with a 'cells' list, got keys {sorted(data)}")
        scale = data.get("scale")
        data = data["cells"]
    if not isinstance(data, list):
        raise CheckError(f"{path}: field 'cells': expected a list of cell objects, got {type(data).__name__}")
    return coerce_results(data, source=str(path), scale=scale)


def _results_field(source: ResultsLike, name: str) -> Any:
    """Field ``name`` of a results document (a directory's ``table6_results.json``, or the file), if any."""
    if not isinstance(source, (str, Path)):
        return None
    path = Path(source)
    if path.is_dir():
        path = path / DEFAULT_RESULTS.name
    data = _read_structured(path)
    return data.get(name) if isinstance(data, Mapping) else None


def results_world(source: ResultsLike) -> Optional[dict[str, Any]]:
    """The identity of the world the results come from (``table6_results.json``'s ``world``), if given."""
    world = _results_field(source, "world")
    return dict(world) if isinstance(world, Mapping) else None


def results_train_seeds(source: ResultsLike) -> Optional[list[int]]:
    """The training seeds of the runs behind the results (``table6_results.json``'s ``train_seeds``), if given."""
    seeds = _results_field(source, "train_seeds")
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        return list(seeds)
    return None


def baseline_world(source: Union[str, Path, Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    """The world identity a baseline was blessed on (``meta.world``), if it records one."""
    data = _read_structured(Path(source)) if isinstance(source, (str, Path)) else source
    meta = data.get("meta") if isinstance(data, Mapping) else None
    world = meta.get("world") if isinstance(meta, Mapping) else None
    return dict(world) if isinstance(world, Mapping) else None


def world_mismatch(ours: Optional[Mapping[str, Any]], blessed: Optional[Mapping[str, Any]]) -> Optional[str]:
    """Why results of world ``ours`` cannot be compared with a baseline of world ``blessed`` (None: they can).

    A baseline without a world identity compares with anything (e.g. full scale). Numbers of different
    worlds (another seed, size, generator, or a checkpoint pretrained with other CPU kernels) differ
    for reasons that are not regressions, so they are refused instead of reported as such.
    """
    if not blessed:
        return None
    if not ours:
        return ("the results do not say which world they come from (written before world identities were "
                "recorded): re-run `bikebench table6` to write them")
    diffs = [f"{key} {ours.get(key)!r} (baseline: {blessed.get(key)!r})" for key in sorted(blessed)
             if ours.get(key) != blessed.get(key)]
    if not diffs:
        return None
    hint = ("the world's tiny CLIP was pretrained with other CPU numerics (see `numerics` in the world's "
            "manifest.json: pinned kernels need an x86-64 CPU with AVX2)"
            if [d for d in diffs if d.startswith("checkpoint_sha256")] == diffs else
            "the results come from another world (`bikebench world build` settings or seed)")
    return f"the results' world differs from the baseline's: {'; '.join(diffs)}. {hint}"


# ----------------------------------------------------------------------------------------- tolerances
class Tolerances(BaseModel):
    """Tolerance (points) and direction rule per cell; the most specific setting wins (cell > table > metric > default)."""

    model_config = ConfigDict(extra="forbid")

    default: float = Field(DEFAULT_PAPER_TOLERANCE, ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    tables: dict[str, float] = Field(default_factory=dict)
    cells: dict[str, float] = Field(default_factory=dict)
    direction: Optional[Direction] = Field(None, description="Overrides the per-metric default for every cell.")
    directions: dict[str, Direction] = Field(default_factory=dict, description="Per-metric direction rule.")

    @field_validator("metrics", "tables", "cells")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if x < 0}
        if bad:
            raise ValueError(f"tolerances must be >= 0, got {bad}")
        return v

    def for_cell(self, key: str, table: str, metric: Optional[str]) -> tuple[float, Direction]:
        """(tolerance, direction) for a cell key ``table/row/column[#variant]``."""
        base_key = key.split("#", 1)[0]
        if key in self.cells:
            tol = self.cells[key]
        elif base_key in self.cells:
            tol = self.cells[base_key]
        elif table in self.tables:
            tol = self.tables[table]
        elif metric is not None and metric in self.metrics:
            tol = self.metrics[metric]
        else:
            tol = self.default
        if self.direction is not None:
            direction: Direction = self.direction
        elif metric is not None and metric in self.directions:
            direction = self.directions[metric]
        else:
            direction = default_direction(metric)
        return tol, direction


def default_direction(metric: Optional[str]) -> Direction:
    """``increase`` for cost metrics (lower is better), ``decrease`` for accuracy-like metrics."""
    return "increase" if metric in LOWER_IS_BETTER else "decrease"


def as_tolerances(tolerance: Union[None, float, Tolerances, Mapping[str, Any]], default: float, direction: Optional[Direction] = None) -> Tolerances:
    """A :class:`Tolerances` from a number, a mapping or None (-> ``default``); ``direction`` overrides."""
    if tolerance is None:
        tol = Tolerances(default=default)
    elif isinstance(tolerance, Tolerances):
        tol = tolerance
    elif isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool):
        if tolerance < 0:
            raise CheckError(f"tolerance must be >= 0, got {tolerance}")
        tol = Tolerances(default=float(tolerance))
    elif isinstance(tolerance, Mapping):
        try:
            tol = Tolerances.model_validate({"default": default, **tolerance})
        except ValidationError as exc:
            raise CheckError(_fmt_validation("<tolerances>", exc)) from None
    else:
        raise CheckError(f"tolerance: expected a number, a mapping or Tolerances, got {type(tolerance).__name__}")
    if direction is not None:
        tol = tol.model_copy(update={"direction": direction})
    return tol


def load_tolerances(path: str | Path) -> dict[str, Tolerances]:
    """Read a tolerance YAML with ``paper:`` and/or ``baseline:`` sections (each a Tolerances mapping)."""
    path = Path(path)
    data = _read_structured(path)
    if not isinstance(data, Mapping) or not set(data) <= {"paper", "baseline"} or not data:
        raise CheckError(f"{path}: expected a mapping with 'paper' and/or 'baseline' sections, got {data!r:.200}")
    out = {}
    for section, default in (("paper", DEFAULT_PAPER_TOLERANCE), ("baseline", DEFAULT_BASELINE_TOLERANCE)):
        if section in data:
            try:
                out[section] = Tolerances.model_validate({"default": default, **(data[section] or {})})
            except ValidationError as exc:
                raise CheckError(_fmt_validation(f"{path}: {section}", exc)) from None
    return out


def _fmt_validation(where: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: field {loc!r}: {msg} (got {err.get('input')!r})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class CheckRow:
    """One compared cell. ``delta = ours - reference`` (None when either side is missing)."""

    key: str
    ours: Optional[float]
    reference: Optional[float]
    delta: Optional[float]
    tolerance: Optional[float]
    direction: Optional[Direction]
    status: Status
    metric: Optional[str] = None
    note: str = ""


@dataclass
class Report:
    """Rows of one comparison, in reference order; rendered row by row by :meth:`to_text`."""

    title: str
    rows: list[CheckRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.rows:
            out[r.status] += 1
        return out

    def by_status(self, status: Status) -> list[CheckRow]:
        return [r for r in self.rows if r.status == status]

    @property
    def compared(self) -> int:
        """Rows where both ours and the reference exist."""
        return sum(r.status in ("ok", "regression", "improved") for r in self.rows)

    def failed(self, fail_on_missing: bool = True) -> bool:
        """A regression, or (unless told otherwise) a missing cell."""
        c = self.counts()
        return c["regression"] > 0 or (fail_on_missing and c["missing"] > 0)

    def to_text(self, fail_on_missing: bool = True) -> str:
        def num(x: Optional[float], signed: bool = False) -> str:
            if x is None:
                return "–"
            return f"{x:+.2f}" if signed else f"{x:.2f}"

        width = max([len(r.key) for r in self.rows] + [4])
        lines = [self.title, "=" * len(self.title)]
        lines += [f"note: {n}" for n in self.notes]
        header = f"{'status':<12} {'cell':<{width}} {'ours':>8} {'ref':>8} {'delta':>8} {'tol':>10}"
        lines += [header, "-" * len(header)]
        for r in self.rows:
            tol = "–" if r.tolerance is None else f"±{r.tolerance:g}" + {"decrease": "↓", "increase": "↑", "both": "↕", None: ""}[r.direction]
            line = f"{r.status.upper():<12} {r.key:<{width}} {num(r.ours):>8} {num(r.reference):>8} {num(r.delta, True):>8} {tol:>10}"
            lines.append(line + (f"  {r.note}" if r.note else ""))
        c = self.counts()
        verdict = "FAIL" if self.failed(fail_on_missing) else "PASS"
        lines.append("-" * len(header))
        lines.append(f"{verdict}: " + ", ".join(f"{n} {s}" for s, n in c.items() if n) + f" ({self.compared} compared)")
        lines.append("tol: ↓ a drop beyond it is a regression, ↑ a rise is, ↕ either is")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "notes": list(self.notes), "counts": self.counts(), "rows": [r.__dict__ for r in self.rows]}


def _judge(ours: float, ref: float, tol: float, direction: Direction) -> tuple[float, Status]:
    delta = ours - ref
    excess = abs(delta) - tol
    if excess <= _EPS:
        return delta, "ok"
    worse = delta < 0 if direction == "decrease" else delta > 0 if direction == "increase" else True
    return delta, "regression" if worse else "improved"


# ----------------------------------------------------------------------------------------- comparing
def compare_with_paper(
    results: ResultsLike,
    registry: Optional[Registry] = None,
    tolerance: Union[None, float, Tolerances, Mapping[str, Any]] = DEFAULT_PAPER_TOLERANCE,
    direction: Optional[Direction] = None,
    *,
    tables: Optional[Sequence[str]] = None,
    scale: Optional[str] = FULL_SCALE,
    include_derived: bool = True,
) -> Report:
    """Our cells against the published numbers.

    Only cells of ``scale`` are compared (default ``"full"``; None compares every cell whatever its
    scale). The scope is ``tables`` (default: the tables our compared cells belong to); within it,
    every published BIKE cell (profile ``official``) we lack is ``missing``; other methods' rows
    are compared only when we provide them. With ``include_derived`` the paper's printed gains
    (e.g. 6a "+1.7") are derived from our cells and compared too; a gain whose operands are missing
    is not reported as missing itself (its operands are).
    """
    registry = registry if registry is not None else load_registry()
    tol = as_tolerances(tolerance, DEFAULT_PAPER_TOLERANCE, direction)
    cells = load_results(results)
    report = Report(title="Check against the paper (published full-scale numbers)")
    if scale is not None:
        skipped = [c for c in cells if c.scale != scale]
        cells = [c for c in cells if c.scale == scale]
        if skipped:
            scales = sorted({str(c.scale) for c in skipped})
            report.notes.append(
                f"{len(skipped)} cell(s) of scale {', '.join(scales)} left out: the paper's numbers are full scale "
                f"(compare them anyway with scale=None / --scale any)"
            )
    if include_derived:
        cells = cells + derive_gain_cells(cells, registry)
    scope = [str(t) for t in tables] if tables is not None else sorted({c.table for c in cells}, key=_table_order(registry))
    ours_by_paper_key: dict[str, list[ResultCell]] = {}
    for c in cells:
        ours_by_paper_key.setdefault(c.paper_key, []).append(c)

    for entry in registry:
        if entry.table not in scope:
            continue
        mine = ours_by_paper_key.pop(entry.key, [])
        if not mine:
            if entry.profile == "external" or entry.approx:
                continue
            if entry.is_gain:
                continue  # its operands are reported (as missing) themselves
            t, d = tol.for_cell(entry.key, entry.table, entry.metric)
            report.rows.append(CheckRow(entry.key, None, entry.value, None, t, d, "missing", entry.metric, "no result of ours"))
            continue
        for c in mine:
            t, d = tol.for_cell(c.key, entry.table, entry.metric)
            delta, status = _judge(c.value, entry.value, t, d)
            note = "derived gain" if c.derived else ""
            report.rows.append(CheckRow(c.key, c.value, entry.value, delta, t, d, status, entry.metric, note))
            if entry.std is not None and not c.derived:
                report.rows.append(_std_row(c, entry.std, t))
    for key, mine in ours_by_paper_key.items():
        for c in mine:
            if c.table in scope:
                report.rows.append(CheckRow(c.key, c.value, None, None, None, None, "no_reference", c.metric, "not in the registry"))
    return report


def _std_row(cell: ResultCell, reference_std: float, tol: float) -> CheckRow:
    """The spread of a mean ± std cell (zero-shot half classes, the K600 splits) against the printed
    std: a change either way beyond the cell's tolerance is a regression (the std is not a score)."""
    key = f"{cell.key}{STD_SUFFIX}"
    if cell.std is None:
        return CheckRow(key, None, reference_std, None, tol, "both", "missing", "std", "our cell has no std")
    delta, status = _judge(cell.std, reference_std, tol, "both")
    return CheckRow(key, cell.std, reference_std, delta, tol, "both", status, "std", "std over the splits")


def _table_order(registry: Registry):
    order = {t: i for i, t in enumerate(registry.tables())}
    return lambda t: (order.get(t, len(order)), t)


@dataclass(frozen=True)
class BaselineCell:
    value: float
    metric: Optional[str] = None
    std: Optional[float] = None
    run_id: Optional[str] = None
    tol: Optional[float] = None
    seed_std: Optional[float] = None
    seeds: Optional[int] = None


_BASELINE_CELL_FIELDS = ("value", "metric", "std", "run_id", "tol", "seed_std", "seeds")


def load_baseline(source: Union[str, Path, Mapping[str, Any]]) -> dict[str, BaselineCell]:
    """A baseline: ``{"cells": {key: {"value": ..}}}`` or a plain ``{key: value}`` mapping (JSON/YAML)."""
    where = str(source) if isinstance(source, (str, Path)) else "<baseline>"
    data = _read_structured(Path(source)) if isinstance(source, (str, Path)) else source
    if not isinstance(data, Mapping):
        raise CheckError(f"{where}: expected a mapping of cell keys to values, got {type(data).__name__}")
    if "cells" in data and isinstance(data["cells"], Mapping):
        schema = data.get("schema", BASELINE_SCHEMA)
        if schema != BASELINE_SCHEMA:
            raise CheckError(f"{where}: field 'schema': expected {BASELINE_SCHEMA!r}, got {schema!r}")
        data = data["cells"]
    out: dict[str, BaselineCell] = {}
    for key, raw in data.items():
        if not isinstance(key, str) or key.split("#", 1)[0].count("/") != 2:
            raise CheckError(f"{where}: cell key {key!r}: expected 'table/row/column' (optionally '#variant')")
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            out[key] = BaselineCell(value=float(raw))
        elif isinstance(raw, Mapping) and isinstance(raw.get("value"), (int, float)) and not isinstance(raw.get("value"), bool):
            unknown = set(raw) - set(_BASELINE_CELL_FIELDS)
            if unknown:
                raise CheckError(f"{where}: cells[{key!r}]: unknown field(s) {sorted(unknown)} "
                                 f"(allowed: {', '.join(_BASELINE_CELL_FIELDS)})")
            tol = raw.get("tol")
            if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0):
                raise CheckError(f"{where}: cells[{key!r}]: field 'tol': expected a number >= 0, got {tol!r}")
            out[key] = BaselineCell(float(raw["value"]), raw.get("metric"), raw.get("std"), raw.get("run_id"),
                                    None if tol is None else float(tol), raw.get("seed_std"), raw.get("seeds"))
        else:
            raise CheckError(f"{where}: cells[{key!r}]: field 'value': expected a number, got {raw!r}")
    return out


def compare_with_baseline(
    results: ResultsLike,
    baseline: Union[str, Path, Mapping[str, Any]],
    tolerance: Union[None, float, Tolerances, Mapping[str, Any]] = None,
    direction: Optional[Direction] = None,
) -> Report:
    """Our cells against a blessed baseline of our own (same scale), cell by cell.

    ``tolerance`` None: each cell's measured ``tol`` from the baseline, else the default; given, it
    applies to every cell."""
    measured = tolerance is None
    tol = as_tolerances(tolerance, DEFAULT_BASELINE_TOLERANCE, direction)
    cells = {c.key: c for c in load_results(results)}
    base = load_baseline(baseline)
    report = Report(title="Check against the baseline" + (f" ({baseline})" if isinstance(baseline, (str, Path)) else ""))
    for key, ref in base.items():
        table = key.split("/", 1)[0]
        mine = cells.pop(key, None)
        metric = (mine.metric if mine is not None and mine.metric else None) or ref.metric
        t, d = tol.for_cell(key, table, metric)
        if measured and ref.tol is not None:
            t = ref.tol
        if mine is None:
            report.rows.append(CheckRow(key, None, ref.value, None, t, d, "missing", metric, "no result of ours"))
            continue
        delta, status = _judge(mine.value, ref.value, t, d)
        note = "better than the baseline: bless a new one if intended" if status == "improved" else ""
        report.rows.append(CheckRow(key, mine.value, ref.value, delta, t, d, status, metric, note))
        if ref.std is not None:
            report.rows.append(_std_row(mine, ref.std, t))
    for key, c in cells.items():
        report.rows.append(CheckRow(key, c.value, None, None, None, None, "no_reference", c.metric, "not in the baseline"))
    return report


def write_baseline(results: ResultsLike, path: Union[str, Path] = DEFAULT_BASELINE, meta: Optional[Mapping[str, Any]] = None,
                   spread: Sequence[ResultsLike] = ()) -> Path:
    """Bless ``results`` as the new baseline (atomic write). Derived cells are not stored; the world
    the results come from (if they say) is recorded as ``meta.world``.

    ``spread``: results of the same table at other training seeds (same world). Each cell then gets
    ``seed_std`` (sample standard deviation over the ``seeds`` values, the blessed one included) and
    ``tol`` = :data:`SPREAD_K` x ``seed_std``: a change within the seeds' own spread is not a regression.
    """
    cells = [c for c in load_results(results) if not c.derived]
    meta = dict(meta or {})
    world = results_world(results)
    if world is not None:
        meta.setdefault("world", world)
    spread_cells: list[dict[str, float]] = []
    for other in spread:
        mismatch = world_mismatch(results_world(other), world) if world is not None else None
        if mismatch is not None:
            raise CheckError(f"{other}: --spread results must come from the blessed results' world: {mismatch}")
        spread_cells.append({c.key: c.value for c in load_results(other) if not c.derived})
    if spread_cells:
        meta["spread"] = {"sources": [str(o) for o in spread], "k": SPREAD_K}

    def measured(c: ResultCell) -> dict[str, Any]:
        values = [c.value] + [s[c.key] for s in spread_cells if c.key in s]
        if len(values) < 2:
            return {}
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return {"tol": round(SPREAD_K * std, 3), "seed_std": round(std, 4), "seeds": len(values)}
    payload = {
        "schema": BASELINE_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "meta": meta,
        "cells": {
            c.key: {**{k: v for k, v in (("value", c.value), ("metric", c.metric), ("std", c.std), ("run_id", c.run_id))
                       if v is not None}, **measured(c)}
            for c in cells
        },
    }
    scales = sorted({str(c.scale) for c in cells if c.scale is not None})
    if scales:
        payload["meta"].setdefault("scale", scales[0] if len(scales) == 1 else scales)
    from bike.rundir import atomic_write_text

    return atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


# -------------------------------------------------------------------------------------------- entry
def check_main(
    results_path: Union[str, Path] = DEFAULT_RESULTS,
    baseline_path: Union[str, Path, None] = None,
    against: Literal["baseline", "paper", "both"] = "baseline",
    tolerance: Union[None, float, Tolerances, Mapping[str, Any]] = None,
    fail_on_missing: bool = True,
    *,
    paper_tolerance: Union[None, float, Tolerances, Mapping[str, Any]] = None,
    baseline_tolerance: Union[None, float, Tolerances, Mapping[str, Any]] = None,
    tolerances_file: Union[str, Path, None] = None,
    direction: Optional[Direction] = None,
    scale: Optional[str] = FULL_SCALE,
    registry: Optional[Registry] = None,
    bless: bool = False,
    spread: Sequence[Union[str, Path]] = (),
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Run the checks, print the reports; exit code 0 (pass), 1 (regression/missing), 2 (bad input).

    Tolerance precedence (per comparison): ``paper_tolerance``/``baseline_tolerance`` > ``tolerance``
    > the ``tolerances_file`` section > defaults (0.5 paper, 1.0 baseline). ``bless`` writes the
    results as the new baseline instead of checking against it.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if against not in ("baseline", "paper", "both"):
        print(f"error: against must be 'baseline', 'paper' or 'both', got {against!r}", file=err)
        return 2
    baseline_path = Path(baseline_path) if baseline_path is not None else DEFAULT_BASELINE
    try:
        results = load_results(results_path)
        if bless:
            written = write_baseline(results_path, baseline_path, meta={"source": str(results_path)}, spread=spread)
            print(f"blessed {len(results)} cell(s) as the baseline: {written}", file=out)
            return 0
        from_file = load_tolerances(tolerances_file) if tolerances_file is not None else {}
        reports: list[Report] = []
        if against in ("baseline", "both"):
            if not baseline_path.exists():
                print(f"error: no baseline at {baseline_path}; bless one with `bikebench check --bless` (writes the current results)", file=err)
                return 2
            mismatch = world_mismatch(results_world(results_path), baseline_world(baseline_path))
            if mismatch is not None:
                print(f"error: not comparing {results_path} with {baseline_path}: {mismatch}", file=err)
                return 2
            tol = _pick(baseline_tolerance, tolerance, from_file.get("baseline"), None)  # None: the cells' measured tol
            reports.append(compare_with_baseline(results, baseline_path, tol, direction))
        if against in ("paper", "both"):
            tol = _pick(paper_tolerance, tolerance, from_file.get("paper"), DEFAULT_PAPER_TOLERANCE)
            reports.append(compare_with_paper(results, registry, tol, direction, scale=scale))
    except (CheckError, OSError) as exc:
        print(f"error: {exc}", file=err)
        return 2
    code = 0
    directions = _directions_text(results, registry, results_path)
    if directions:
        print(directions, file=out)
    for report in reports:
        print(report.to_text(fail_on_missing), file=out)
        print(file=out)
        if report.compared == 0 and not report.by_status("missing"):
            print(f"error: {report.title}: nothing to compare (no cell of ours has a reference)", file=err)
            code = max(code, 2)
        elif report.failed(fail_on_missing):
            code = max(code, 1)
    return code


def _directions_text(results: Sequence[ResultCell], registry: Optional[Registry], source: Any = None) -> str:
    """The ablation-direction summary of the Table 6 cells among ``results`` (harness.directions), or "".
    When ``source`` is a results directory or a file in one, each direction is also tested on the
    validation videos of its runs' caches (:mod:`harness.significance`); a cache that contradicts its cell
    leaves them untested, with the reason."""
    from harness.directions import ablation_directions, table6_cells
    from harness.significance import resolve_directions

    cells = table6_cells(results)
    if not cells:
        return ""
    report = ablation_directions(cells, registry)
    if not report.total:
        return ""
    if isinstance(source, (str, Path)):
        resolve_directions(report, cells, source, strict=False)
    return report.to_markdown()


def _pick(specific: Any, general: Any, from_file: Optional[Tolerances], default: float) -> Any:
    for candidate in (specific, general, from_file):
        if candidate is not None:
            return candidate
    return default
