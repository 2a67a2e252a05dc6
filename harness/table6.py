"""The driver: specs → plan → submitit → run directories → MLflow → table cells; and Table 6.

:func:`run_specs` is what ``bikebench run`` does for any spec; :func:`run_table6` runs
``experiments/table6.yaml`` and writes

* ``<results>/table6_results.json``: a list of ``{table, row, column, value, scale, run_id, metric,
  spec, spec_variant}`` cells of this invocation's scale (what ``bikebench check`` reads), and a copy
  per scale, ``table6_results_<scale>.json``, so smoke and full results live side by side; cells
  without a value (paper-only rows, variants not run at this scale, failed runs) are listed in
  ``<results>/table6_missing.json`` with the reason;
* ``<results>/table6.md``: ours beside the paper (``harness.tables``; a plain table if missing),

prints the table and attaches both files to the MLflow parent run of (table6, scale).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from harness.executor import Runner, RunOutcome
from harness.expand import Plan, WorldProvider, bike_world, default_world_root, expand
from harness.jobs import JobTarget
from harness.rundir import RunDir, atomic_write_json, atomic_write_text
from harness.spec import ResourceSpec, Spec, load_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE6_SPEC = REPO_ROOT / "experiments" / "table6.yaml"
TABLE6_RESULTS = "table6_results.json"
TABLE6_MISSING = "table6_missing.json"
TABLE6_MARKDOWN = "table6.md"


@dataclass
class DriveResult:
    """What one invocation did: the plan, each run's outcome, the collected cells."""

    plan: Plan
    outcomes: dict[str, RunOutcome]
    cells: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    tracking_error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return all(o.state in ("done", "planned") for o in self.outcomes.values())


def result_metric(result: Mapping[str, Any], metric: str) -> Optional[float]:
    """``metric`` of a result.json: a top-level key, a dotted path, or a key of ``result["metrics"]``."""
    candidates: list[Any] = [result.get(metric)]
    node: Any = result
    for part in metric.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    candidates.append(node)
    metrics = result.get("metrics")
    if isinstance(metrics, Mapping):
        candidates.append(metrics.get(metric))
    for value in candidates:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def collect_cells(plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(cells with values, cells without) for every cell the plan's specs name."""
    cells: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for cell, run_id in plan.cells():
        key = (cell.table, cell.row, cell.column)
        if key in seen:
            continue
        seen.add(key)
        rd = RunDir.for_run(plan.results, run_id)
        base = {"table": cell.table, "row": cell.row, "column": cell.column, "scale": plan.scale,
                "run_id": run_id, "metric": cell.metric, "spec": cell.spec, "spec_variant": cell.variant}
        result = rd.result() if rd.is_done() else None
        value = result_metric(result, cell.metric) if result is not None else None
        if value is None:
            reason = f"run is {rd.state()}" if result is None else f"result.json has no metric {cell.metric!r}"
            missing.append({**base, "value": None, "reason": reason})
        else:
            cells.append({**base, "value": value})
    for nr in plan.not_run:
        key = (nr.table, nr.row, nr.column)
        if key not in seen:
            seen.add(key)
            missing.append({"table": nr.table, "row": nr.row, "column": nr.column, "scale": plan.scale,
                            "run_id": None, "value": None, "spec": nr.spec, "spec_variant": nr.variant, "reason": nr.reason})
    return cells, missing


def plain_markdown(cells: Sequence[Mapping[str, Any]], missing: Sequence[Mapping[str, Any]], title: str) -> str:
    """A plain Markdown table of our cells (used when harness.tables is unavailable)."""
    lines = [f"# {title}", "", "| table | row | column | ours | scale | run |", "|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["table"], c["row"], c["column"])):
        lines.append(f"| {c['table']} | {c['row']} | {c['column']} | {c['value']:.2f} | {c['scale']} | {c['run_id']} |")
    if missing:
        lines += ["", "Cells without a value:", ""]
        lines += [f"- {m['table']} {m['row']} {m['column']}: {m['reason']}" for m in missing]
    return "\n".join(lines) + "\n"


def render_table6(cells: Sequence[Mapping[str, Any]], missing: Sequence[Mapping[str, Any]], scale: str) -> str:
    """Ours beside the paper via ``harness.tables`` (a plain table when it cannot be imported)."""
    title = f"Table 6: Ablation studies on Kinetics-400 — ours ({scale} scale) beside the paper"
    try:
        from harness.registry import load_registry
        from harness.tables import render_table6_markdown

        text = render_table6_markdown(load_registry(), list(cells), title=title)
    except Exception as exc:  # noqa: BLE001 - finished runs must still give a table
        return plain_markdown(cells, missing, f"{title} (paper columns unavailable: {type(exc).__name__}: {exc})")
    if missing:
        text += "\n\n## Cells without a value of ours\n\n"
        text += "\n".join(f"- {m['table']} `{m['row']}` / `{m['column']}`: {m['reason']}" for m in missing) + "\n"
    return text


def log_to_mlflow(plan: Plan, results: Path, tracking_uri: Optional[str], log: Callable[[str], None]) -> Optional[str]:
    """Replay the plan's run directories into MLflow; returns an error text instead of raising
    (a tracking server being down must not lose a finished table: `bikebench sync` catches up)."""
    try:
        from harness.tracking import Tracker

        tracker = Tracker(results, tracking_uri)
        entries = [(RunDir(r.run_dir), spec, variant, plan.scale) for r in plan.runs for spec, variant in r.requested_by]
        report = tracker.log_plan_runs(entries)
        log(f"MLflow ({tracker.uri}): {report}")
        return None
    except Exception as exc:  # noqa: BLE001 - any tracking failure is reported, not fatal
        message = f"MLflow logging failed ({type(exc).__name__}: {exc}); run `bikebench sync` later"
        log(message)
        return message


def run_specs(
    specs: Sequence[Spec],
    scale: str = "smoke",
    cluster: str = "local",
    results: str | Path = "results",
    tracking_uri: Optional[str] = None,
    dry_run: bool = False,
    world: Optional[WorldProvider] = None,
    world_size: str = "default",
    only: Optional[Sequence[str]] = None,
    job_targets: Optional[Mapping[str, JobTarget]] = None,
    resources: Optional[ResourceSpec] = None,
    parallelism: int = 1,
    poll_s: float = 1.0,
    track: bool = True,
    log: Callable[[str], None] = print,
) -> DriveResult:
    """Expand, submit, wait, log to MLflow and collect the cells of ``specs``."""
    results = Path(results).resolve()
    needs_world = scale == "smoke"
    if world is None and needs_world:
        world = bike_world(default_world_root(results), size=world_size)
    plan = expand(list(specs), scale, results, world=world, only=only)
    runner = Runner(results, cluster, job_targets=job_targets, resources=resources, parallelism=parallelism,
                    poll_s=poll_s, log=log)
    outcomes = runner.execute(plan, dry_run=dry_run)
    if dry_run:
        for sub in runner.submissions:
            log(f"wave {sub.wave}: {len(sub.run_ids)} run(s) {', '.join(sub.run_ids)} with {sub.parameters}")
        for run in plan.runs:
            o = outcomes[run.run_id]
            log(f"  {run.run_id} {run.kind:8s} {o.action:12s} {', '.join(f'{s}.{v}' for s, v in run.requested_by)}"
                + (f" <- {', '.join(run.dependencies)}" if run.dependencies else ""))
        return DriveResult(plan, outcomes)
    tracking_error = log_to_mlflow(plan, results, tracking_uri, log) if track else None
    cells, missing = collect_cells(plan)
    return DriveResult(plan, outcomes, cells, missing, tracking_error)


def run_table6(
    scale: str = "smoke",
    cluster: str = "local",
    results: str | Path = "results",
    tracking_uri: Optional[str] = None,
    spec_path: str | Path = TABLE6_SPEC,
    overrides: Sequence[str] = (),
    dry_run: bool = False,
    out: Any = None,
    **kwargs: Any,
) -> DriveResult:
    """``bikebench table6``: run Table 6 and write/print/log its results (see the module docstring)."""
    out = out if out is not None else sys.stdout
    results = Path(results).resolve()
    spec = load_spec(spec_path, overrides)
    drive = run_specs([spec], scale=scale, cluster=cluster, results=results, tracking_uri=tracking_uri,
                      dry_run=dry_run, log=lambda m: print(m, file=out), **kwargs)
    if dry_run:
        return drive
    results_path = results / TABLE6_RESULTS
    missing_path = results / TABLE6_MISSING
    atomic_write_json(results_path, drive.cells)
    atomic_write_json(results / f"table6_results_{scale}.json", drive.cells)
    atomic_write_json(missing_path, drive.missing)
    text = render_table6(drive.cells, drive.missing, scale)
    atomic_write_text(results / TABLE6_MARKDOWN, text)
    print(text, file=out)
    if kwargs.get("track", True) and drive.tracking_error is None:
        try:
            from harness.tracking import Tracker

            Tracker(results, tracking_uri).log_parent_artifacts(
                spec.name, scale, [results_path, missing_path, results / TABLE6_MARKDOWN]
            )
        except Exception as exc:  # noqa: BLE001
            print(f"MLflow: could not attach the table ({exc}); `bikebench sync` does not attach tables", file=out)
    return drive
