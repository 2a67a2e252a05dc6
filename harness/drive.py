"""The driver: specs → plan → submitit → run directories → MLflow → table cells.

:func:`run_specs` is what ``bikebench run`` does for any spec (and ``bikebench table6`` for its one,
:mod:`harness.table6`): expand the specs into a plan (:mod:`harness.expand`), submit and wait
(:mod:`harness.executor`), replay the run directories into MLflow (:func:`log_to_mlflow`,
:mod:`harness.tracking`) and collect the value of every table cell the specs name
(:func:`collect_cells`; cells without one are listed with the reason).

One run per run id, whatever runs at the same time: the driver holds the lock of every run directory
it plans (:meth:`harness.rundir.RunDir.lock`, taken in run-id order so that two drivers never wait for
each other crosswise) from before it looks at them until its jobs have ended. A second driver asking
for the same runs waits, then finds them done (or resumes what the first left unfinished); MLflow
logging then takes the store's lock (:meth:`harness.tracking.Tracker.locked`).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from harness.executor import Runner, RunOutcome
from harness.expand import Plan, WorldProvider, bike_world, default_world_root, expand
from harness.jobs import JobTarget
from harness.rundir import RunDir
from harness.spec import ResourceSpec, Spec


@dataclass
class DriveResult:
    """What one invocation did: the plan, each run's outcome, the collected cells."""

    plan: Plan
    outcomes: dict[str, RunOutcome]
    cells: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    tracking_error: Optional[str] = None
    #: The embedded world's identity at smoke scale (``bike.world.WorldInfo.identity``), else None.
    world: Optional[dict[str, Any]] = None
    #: Wall seconds of this invocation's phases (:func:`run_specs`): ``world_s`` (building the
    #: embedded world, or reading its manifest when it is built), ``plan_s`` (expanding the specs,
    #: the world excepted), ``runs_s`` (submitting and waiting for the runs), ``collect_s`` (the runs'
    #: λ pictures, MLflow and the cells); the caller may add its own (``tables_s``: ``bikebench table6``'s
    #: tables, pictures and MLflow parent run).
    timings: dict[str, float] = field(default_factory=dict)

    def results_document(self, scale: str) -> dict[str, Any]:
        """What ``table6_results.json`` holds: the scale, the world the cells come from, the training
        seeds of the runs behind the cells (``train_seeds``: one, unless a spec sets its own), the cells."""
        doc: dict[str, Any] = {"scale": scale}
        if self.world is not None:
            doc["world"] = self.world
        seeds = sorted({r.config.seed for r in self.plan.runs})
        if seeds:
            doc["train_seeds"] = seeds
        doc["cells"] = self.cells
        return doc

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
            std = result_metric(result, cell.metric[: -len("_mean")] + "_std") if cell.metric.endswith("_mean") else None
            cells.append({**base, "value": value, **({"std": std} if std is not None else {})})
    for nr in plan.not_run:
        key = (nr.table, nr.row, nr.column)
        if key not in seen:
            seen.add(key)
            missing.append({"table": nr.table, "row": nr.row, "column": nr.column, "scale": plan.scale,
                            "run_id": None, "value": None, "spec": nr.spec, "spec_variant": nr.variant, "reason": nr.reason})
    return cells, missing

def log_to_mlflow(plan: Plan, results: Path, tracking_uri: Optional[str], log: Callable[[str], None]) -> Optional[str]:
    """Replay the plan's run directories into MLflow; returns an error text instead of raising
    (a tracking server being down must not lose a finished table: `bikebench sync` catches up)."""
    try:
        from harness.tracking import Tracker, TrackingError, one_line

        tracker = Tracker(results, tracking_uri)
        entries = [(RunDir(r.run_dir), spec, variant, plan.scale) for r in plan.runs for spec, variant in r.requested_by]
        report = tracker.log_plan_runs(entries)
        log(f"MLflow ({tracker.uri}): {report}")
        for line in report.failed:
            log(f"MLflow did not take run {line}")
        if report.failed:
            return f"MLflow logging failed for {len(report.failed)} run(s); run `bikebench sync` once fixed"
        return None
    except TrackingError as exc:
        message = f"MLflow logging failed: {exc}; run `bikebench sync` later"
    except Exception as exc:  # noqa: BLE001 - any tracking failure is reported, not fatal
        message = f"MLflow logging failed ({type(exc).__name__}: {one_line(exc)}); run `bikebench sync` later"
    log(message)
    return message


def next_steps(results: Path, tracking_uri: Optional[str] = None, html: Optional[Path] = None, track: bool = True) -> str:
    """What to do after a table: where its report and the runs are, how to open MLflow, `make check`, `make tune`."""
    lines = ["", "Next steps:"]
    if html is not None:
        lines.append(f"  report with every picture:  {html}")
    if track:
        try:
            from harness.tracking import resolve_tracking_uri

            uri = resolve_tracking_uri(tracking_uri, results)
        except Exception:  # noqa: BLE001 - the hint must not fail the table
            uri = "`bikebench mlflow-uri`"
        from harness.mlflow_runs import runs_view_link

        lines.append(f"  MLflow ({uri}):  make mlflow-ui (bikebench ui prints each experiment's runs view), "
                     f"then {runs_view_link('http://127.0.0.1:5000')}")
    else:
        lines.append("  MLflow:  not logged (--no-track); `bikebench sync` logs the runs later")
    lines += ["  regression check against the baseline:  make check   (bikebench check)",
              "  tune λ and the number of attributes on the cached scores:  make tune   (bikebench tune sweeps/lambda_k.yaml)",
              f"  state of every run:  bikebench status --results {results}"]
    return "\n".join(lines)


def format_timings(timings: Mapping[str, float], outcomes: Mapping[str, RunOutcome], parallelism: int,
                   cluster: str = "local") -> str:
    """One line: where an invocation's time went (``DriveResult.timings``), e.g.
    ``Time: 6m45s in all: world 4m35s, planning 1s, runs 2m01s (15 run here, 2 at a time; 0 done before), ...``."""
    from harness.executor import format_duration

    actions = [o.action for o in outcomes.values()]
    ran, waited, done = actions.count("submitted"), actions.count("waited"), actions.count("skipped-done")
    how = f"{parallelism} at a time" if cluster != "slurm" else "on SLURM"
    elsewhere = f", {waited} waited for (another invocation ran them)" if waited else ""
    parts = [f"world {format_duration(timings.get('world_s', 0.0))}",
             f"planning {format_duration(timings.get('plan_s', 0.0))}",
             f"runs {format_duration(timings.get('runs_s', 0.0))} ({ran} run here, {how}{elsewhere}; {done} done before)",
             f"MLflow and cells {format_duration(timings.get('collect_s', 0.0))}"]
    if "tables_s" in timings:
        parts.append(f"tables, pictures and the MLflow parent {format_duration(timings['tables_s'])}")
    return f"Time: {format_duration(sum(timings.values()))} in all: " + ", ".join(parts)


#: Seconds between two passes of :func:`stream_to_mlflow` at the least (it follows the runner's poll).
STREAM_MIN_S = 5.0


@contextlib.contextmanager
def stream_to_mlflow(plan: Plan, results: Path, tracking_uri: Optional[str], log: Callable[[str], None],
                     every_s: float = STREAM_MIN_S) -> Iterator[None]:
    """While the jobs run: every ``every_s`` seconds replay the plan's run directories into MLflow (a
    child run appears when its job starts, with the job's start time; its new ``metrics.jsonl`` lines
    follow at their steps; it ends with the job). Jobs never talk to MLflow: the driver reads their run
    directories. A store that fails stops the streaming with one line (the final logging and
    ``bikebench sync`` catch up); the parents stay running (the table ends its own)."""
    stop = threading.Event()
    entries = [(RunDir(r.run_dir), spec, variant, plan.scale) for r in plan.runs for spec, variant in r.requested_by]

    def loop() -> None:
        try:
            from harness.tracking import Tracker

            tracker = Tracker(results, tracking_uri)
            while not stop.wait(every_s):
                tracker.log_plan_runs(entries, finish_parents=False)
        except Exception as exc:  # noqa: BLE001 - streaming is a convenience; the final logging reports faults
            log(f"MLflow: live logging stopped ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                "the runs are logged when they end")

    thread = threading.Thread(target=loop, name="bikebench-mlflow-stream", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


#: Seconds a driver waits for a run directory's lock before it says that it is waiting.
LOCK_NOTICE_S = 2.0


@contextlib.contextmanager
def locked_runs(plan: Plan, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock of every planned run directory, taken in run-id order (no two drivers can each
    hold a lock the other waits for); a driver that has to wait says so once per run."""
    with contextlib.ExitStack() as stack:
        for run in sorted(plan.runs, key=lambda r: r.run_id):
            rd = RunDir(run.run_dir)
            notice = threading.Timer(LOCK_NOTICE_S, log, (f"[{rd.run_id}] another bikebench driver is running it; waiting",))
            notice.daemon = True
            notice.start()
            try:
                stack.enter_context(rd.lock())
            finally:
                notice.cancel()
        yield


def plan_record(run: Any, action: Optional[str] = None) -> dict[str, Any]:
    """One planned run as ``--dry-run --json`` prints it: identity, what asks for it, what it fills,
    its dependencies and resources, and the complete resolved config (``RunConfig.resolved``)."""
    spec, variant = run.requested_by[0]
    return {
        "run_id": run.run_id,
        "spec": spec,
        "variant": variant,
        "requested_by": [f"{s}.{v}" for s, v in run.requested_by],
        "kind": run.kind,
        "stage": run.config.stage,
        "scale": run.scale,
        "action": action,
        "dependencies": list(run.dependencies),
        "cells": [{"table": c.table, "row": c.row, "column": c.column, "metric": c.metric} for c in run.cells],
        "resources": run.resources.model_dump(mode="json", exclude_none=True),
        "config": run.config.resolved(),
    }


def not_run_records(plan: Plan, world: Optional[WorldProvider] = None) -> list[dict[str, Any]]:
    """One ``--dry-run --json`` record per variant that does not run at this scale (``kind: not_run``,
    ``run_id`` null, its cells, the reason — the variant's ``not_run_note`` — and its resolved config,
    e.g. the zoo's row recomputed from released score files); paper-only cells and variants whose
    config does not resolve at this scale are left out."""
    from harness.spec.resolve import resolve_config

    specs = {s.name: s for s in plan.specs}
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for nr in plan.not_run:
        if nr.variant is None or nr.spec not in specs:
            continue
        if (nr.spec, nr.variant) not in grouped:
            try:
                config = resolve_config(specs[nr.spec], nr.variant, plan.scale, world=world).resolved()
            except Exception:  # noqa: BLE001 - a variant that cannot resolve here is simply not listed
                grouped[(nr.spec, nr.variant)] = {}
                continue
            grouped[(nr.spec, nr.variant)] = {
                "run_id": None, "spec": nr.spec, "variant": nr.variant, "kind": "not_run", "scale": plan.scale,
                "action": "not-run", "dependencies": [], "cells": [], "reason": nr.reason, "config": config}
        if grouped[(nr.spec, nr.variant)]:
            grouped[(nr.spec, nr.variant)]["cells"].append({"table": nr.table, "row": nr.row, "column": nr.column})
    return [r for r in grouped.values() if r]


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
    show: str = "text",
    rewrite: Optional[Callable[[Plan], Plan]] = None,
    absent_checkpoints: str = "skip",
) -> DriveResult:
    """Expand, submit, wait, log to MLflow and collect the cells of ``specs``.

    ``show`` (with ``dry_run``): ``text`` (waves and runs, one line each), ``json`` (one JSON object
    per planned run on stdout, :func:`plan_record`) or ``yaml`` (the same records as YAML documents).
    ``rewrite``: a function of the expanded plan returning the plan to run instead (``bikebench rehearse``,
    :mod:`harness.rehearse`); ``absent_checkpoints``: :func:`harness.expand.expand`'s."""
    results = Path(results).resolve()
    needs_world = scale == "smoke"
    if world is None and needs_world:
        world = bike_world(default_world_root(results), size=world_size)
    timings: dict[str, float] = {"world_s": 0.0}
    if world is not None:
        world = _timed_world(world, timings)
    t0 = time.perf_counter()
    plan = expand(list(specs), scale, results, world=world, only=only, absent_checkpoints=absent_checkpoints)
    if rewrite is not None:
        plan = rewrite(plan)
    runner = Runner(results, cluster, job_targets=job_targets, resources=resources, parallelism=parallelism,
                    poll_s=poll_s, log=log)
    runner.preflight(plan, dry_run=dry_run)  # bad inputs refused before any run directory is locked or made
    streaming = track and not dry_run
    timings["plan_s"] = time.perf_counter() - t0 - timings["world_s"]
    t0 = time.perf_counter()
    with contextlib.nullcontext() if dry_run else locked_runs(plan, log), \
            stream_to_mlflow(plan, results, tracking_uri, log, every_s=max(poll_s, STREAM_MIN_S)) if streaming \
            else contextlib.nullcontext():
        outcomes = runner.execute(plan, dry_run=dry_run)
    timings["runs_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if dry_run and show in ("json", "yaml"):
        import json
        import sys

        import yaml

        for run in plan.runs:
            record = plan_record(run, outcomes[run.run_id].action)
            if show == "json":
                sys.stdout.write(json.dumps(record, sort_keys=False) + "\n")
            else:
                sys.stdout.write("---\n" + yaml.safe_dump(record, sort_keys=False))
        for record in not_run_records(plan, world):  # variants that do not run here, with the reason (e.g. the zoo's score row)
            sys.stdout.write(json.dumps(record, sort_keys=False) + "\n" if show == "json"
                             else "---\n" + yaml.safe_dump(record, sort_keys=False))
        sys.stdout.flush()
        return DriveResult(plan, outcomes)
    if dry_run:
        for sub in runner.submissions:
            log(f"wave {sub.wave}: {len(sub.run_ids)} run(s) {', '.join(sub.run_ids)} with {sub.parameters}")
        for run in plan.runs:
            o = outcomes[run.run_id]
            log(f"  {run.run_id} {run.kind:8s} {o.action:12s} {', '.join(f'{s}.{v}' for s, v in run.requested_by)}"
                + (f" <- {', '.join(run.dependencies)}" if run.dependencies else ""))
        return DriveResult(plan, outcomes)
    from harness.figures import lambda_figures

    lambda_figures([r.run_dir for r in plan.runs if RunDir(r.run_dir).is_done()], log)  # <run>/figures/lambda.*
    tracking_error = log_to_mlflow(plan, results, tracking_uri, log) if track else None
    cells, missing = collect_cells(plan)
    identity = world("general").values.get("identity") if world is not None else None
    timings["collect_s"] = time.perf_counter() - t0
    return DriveResult(plan, outcomes, cells, missing, tracking_error, identity, timings)


def _timed_world(world: WorldProvider, timings: dict[str, float]) -> WorldProvider:
    """``world``, adding the seconds each call takes to ``timings["world_s"]`` (the first call builds
    the world or reads its manifest; later ones are cached)."""
    def provider(split: str):
        t0 = time.perf_counter()
        try:
            return world(split)
        finally:
            timings["world_s"] += time.perf_counter() - t0

    return provider
