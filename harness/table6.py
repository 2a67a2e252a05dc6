"""Table 6: :func:`run_table6` runs ``experiments/table6.yaml`` through the driver
(:func:`harness.drive.run_specs`) and writes

* ``<results>/table6_results.json``: ``{"scale", "world", "cells"}`` with the list of ``{table, row,
  column, value, scale, run_id, metric, spec, spec_variant}`` cells of this invocation's scale (what
  ``bikebench check`` reads) and, at smoke scale, the identity of the world they come from; a copy
  per scale, ``table6_results_<scale>.json``, so smoke and full results live side by side; cells
  without a value (paper-only rows, variants not run at this scale, failed runs) are listed in
  ``<results>/table6_missing.json`` with the reason;
* ``<results>/table6.md``: ours beside the paper (``harness.tables``; a plain table if missing),
  ending with "Ablation directions: N of M reproduced" and the missed ones (``harness.directions``;
  also under ``directions`` in ``table6_results.json``),

``<results>/table6.html`` and ``table6.tex`` (the same sub-tables, as every other table), prints the
table and makes the MLflow parent run of (table6, scale) the table (:func:`log_table_parent`: each cell
a metric, ours and Δ to the paper; spec, scale, profile, commit as params; the files as artifacts).

With ``lambda_from`` (``bikebench table6 --lambda-from STUDY``) every cell whose metric is a fused one
(``fused_top1``, ``fused_top5``, ``fused_mean_class``) is recomputed from its run's cached scores of the
reported split (``<run>/cache/<eval.split>/``) at the λ of an Optuna study's ``best.json``
(:func:`study_lambda_cells`; no network runs). ``table6.md`` then shows the study-λ value beside the
paper, with the run's own fixed-λ value in parentheses, and notes where λ comes from (loudly when the
study tuned on the reported split); the recomputed cells go to ``<results>/table6_lambda.json``.
``table6_results.json`` keeps the runs' own fixed-λ values (what ``bikebench check`` compares).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from bike.rundir import CONFIG_FILE
from harness.drive import DriveResult, run_specs
from harness.rundir import RunDir, atomic_write_json, atomic_write_text
from harness.spec import load_spec

if TYPE_CHECKING:
    from harness.directions import DirectionReport
    from harness.tuning import StudyLambda

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE6_SPEC = REPO_ROOT / "experiments" / "table6.yaml"
TABLE6_RESULTS = "table6_results.json"
TABLE6_MISSING = "table6_missing.json"
TABLE6_MARKDOWN = "table6.md"
TABLE6_HTML = "table6.html"
TABLE6_LATEX = "table6.tex"
TABLE6_LAMBDA = "table6_lambda.json"
#: result.json metric of a fused cell -> the metric recomputed at the study's λ (harness.tuning.fused_metric).
FUSED_CELL_METRICS = {"fused_top1": "top1", "fused_top5": "top5", "fused_mean_class": "mean_class"}


def plain_markdown(cells: Sequence[Mapping[str, Any]], missing: Sequence[Mapping[str, Any]], title: str) -> str:
    """A plain Markdown table of our cells (used when harness.tables is unavailable)."""
    lines = [f"# {title}", "", "| table | row | column | ours | scale | run |", "|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["table"], c["row"], c["column"])):
        lines.append(f"| {c['table']} | {c['row']} | {c['column']} | {c['value']:.2f} | {c['scale']} | {c['run_id']} |")
    if missing:
        lines += ["", "Cells without a value:", ""]
        lines += [f"- {m['table']} {m['row']} {m['column']}: {m['reason']}" for m in missing]
    return "\n".join(lines) + "\n"


def render_table6(
    cells: Sequence[Mapping[str, Any]], missing: Sequence[Mapping[str, Any]], scale: str, notes: Sequence[str] = ()
) -> str:
    """Ours beside the paper via ``harness.tables`` (a plain table when it cannot be imported);
    ``notes`` go under the title (e.g. where the λ of the fused cells comes from)."""
    title = f"Table 6: Ablation studies on Kinetics-400 — ours ({scale} scale) beside the paper"
    try:
        from harness.registry import load_registry
        from harness.tables import render_table6_markdown

        text = render_table6_markdown(load_registry(), list(cells), title=title, notes=notes)
    except Exception as exc:  # noqa: BLE001 - finished runs must still give a table
        text = plain_markdown(cells, missing, f"{title} (paper columns unavailable: {type(exc).__name__}: {exc})")
        head, _, rest = text.partition("\n\n")
        return head + "\n\n" + "".join(f"> {n}\n\n" for n in notes) + rest
    if missing:
        text += "\n\n## Cells without a value of ours\n\n"
        text += "\n".join(f"- {m['table']} `{m['row']}` / `{m['column']}`: {m['reason']}" for m in missing) + "\n"
    return text


def render_table6_html_latex(cells: Sequence[Mapping[str, Any]], scale: str, notes: Sequence[str] = ()) -> tuple[str, str]:
    """``table6.html`` and ``table6.tex``: the nine sub-tables ours beside the paper (``harness.tables``),
    as ``bikebench table`` writes every other table; ('', '') when the paper's numbers cannot be read."""
    import html

    try:
        from harness.registry import load_registry
        from harness.tables import TABLE6_IDS, build_comparison, comparison_to_html, comparison_to_latex

        registry = load_registry()
        title = f"Table 6: Ablation studies on Kinetics-400 — ours ({scale} scale) beside the paper"
        body = [f"<h1>{html.escape(title)}</h1>"] + [f"<p class=\"note\">{html.escape(n)}</p>" for n in notes]
        tex = []
        for t in TABLE6_IDS:
            cmp = build_comparison(registry, list(cells), t)
            body.append(comparison_to_html(cmp))
            tex.append(comparison_to_latex(cmp, label=f"tab:{t}"))
    except Exception:  # noqa: BLE001 - the Markdown table is the one that must exist
        return "", ""
    page = ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Table 6</title><style>"
            "body{font-family:sans-serif;max-width:80em;margin:auto} table{border-collapse:collapse;margin:1em 0}"
            " td,th{border:1px solid #ccc;padding:2px 6px} td.pos{color:#070} td.neg{color:#a00}"
            " caption{text-align:left}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return page, "\n".join(tex) + "\n"


def log_table_parent(results: Path, tracking_uri: Optional[str], spec: Any, scale: str, cells: Sequence[Mapping[str, Any]],
                     artifacts: Sequence[Path], metrics: Mapping[str, float], figures: Optional[Path]) -> str:
    """The MLflow parent run of (spec, scale) as the table (:meth:`harness.tracking.Tracker.log_table`):
    every cell (ours, Δ to the paper), spec/scale/profile/commit as params, the table files, ended."""
    from harness.expand import code_version
    from harness.tracking import Tracker

    code = code_version()
    params = {"spec": spec.name, "scale": scale, "profile": getattr(spec, "profile", None) or "",
              "git_commit": code.get("commit") or "", "spec_description": getattr(spec, "description", "") or ""}
    return Tracker(results, tracking_uri).log_table(spec.name, scale, cells, artifacts, params=params, metrics=metrics,
                                                    figures=figures)


def _fmt_lambda(lam: float) -> str:
    return f"{lam:.3f}".rstrip("0").rstrip(".") if lam not in (0.0, 1.0) else f"{lam:.0f}"


def study_lambda_cells(
    cells: Sequence[Mapping[str, Any]], results: str | Path, study: "StudyLambda"
) -> tuple[list[dict[str, Any]], list[str]]:
    """Recompute every fused cell (metric in :data:`FUSED_CELL_METRICS`) at the study's λ.

    For each such cell: the run's ``config.yaml`` gives the reported split (``eval.split``), its
    ``fusion.transform`` and its own λ; ``<run>/cache/<split>/`` gives ``video_scores``, ``attr_scores``
    and labels (``harness.tuning.load_score_cache``); the value is ``harness.tuning.fused_metric`` at
    ``study.best_lambda``. No network runs. The returned cell has ``value`` = the study-λ value, and
    ``fixed_value`` / ``fixed_lambda`` = the run's own (result.json) value and λ, plus ``lambda``,
    ``lambda_from``, ``lambda_split``, ``lambda_transform``. Other cells are returned unchanged.

    Returns (cells, notes for the table). Raises :class:`harness.tuning.StudyLambdaError` (a
    ConfigError) when a run's classes differ from the study's, or its cache cannot be read.
    """
    from bike.config import RunConfig
    from harness.tuning import CacheError, StudyLambdaError, fused_metric, load_score_cache

    results = Path(results)
    out: list[dict[str, Any]] = []
    recomputed: list[dict[str, Any]] = []
    checks: list[str] = []
    caches: dict[str, Any] = {}
    for cell in cells:
        metric = FUSED_CELL_METRICS.get(str(cell.get("metric")))
        if metric is None or not cell.get("run_id"):
            out.append(dict(cell))
            continue
        where = f"cell {cell['table']}/{cell['row']}/{cell['column']} (run {cell['run_id']})"
        run_dir = RunDir.for_run(results, str(cell["run_id"])).path
        try:
            if cell["run_id"] not in caches:
                if not (run_dir / CONFIG_FILE).is_file():
                    raise CacheError(f"{run_dir / 'config.yaml'}: file not found (the run's split, λ and transform come from it)")
                config = RunConfig.from_yaml(run_dir / CONFIG_FILE)
                caches[cell["run_id"]] = load_score_cache(run_dir, config.eval.split)
            cache = caches[cell["run_id"]]
            if list(cache.classes) != list(study.classes):
                first = next((i for i, (a, b) in enumerate(zip(cache.classes, study.classes)) if a != b), None)
                detail = (f"class {first}: {cache.classes[first]!r} vs the study's {study.classes[first]!r}" if first is not None
                          else f"{len(cache.classes)} classes vs the study's {len(study.classes)}")
                raise StudyLambdaError(
                    f"{study.path}: the study's classes (source run {study.source_run}, {study.split} split) do not match "
                    f"{where}: {cache.directory / 'manifest.json'} lists other classes ({detail}); "
                    "a λ tuned on other classes does not apply"
                )
            config = cache.config
            transform = config.fusion.transform
            value = fused_metric(cache, study.best_lambda, metric, transform)
            recheck = fused_metric(cache, config.fusion_lambda, metric, transform)
        except CacheError as exc:
            raise StudyLambdaError(f"--lambda-from {study.study}: {where}: cannot recompute its fused score: {exc}") from None
        fixed = float(cell["value"])
        if recheck != fixed:  # evaluation fused with the same function (bike.fusion): only another cache differs
            checks.append(
                f"{where}: recomputed at its own λ = {_fmt_lambda(config.fusion_lambda)} from {cache.directory} it gives "
                f"{recheck:.4f}, not the {fixed:.4f} of result.json: that cache may not be the one its metrics came from."
            )
        new = {**cell, "value": value, "fixed_value": fixed, "fixed_lambda": config.fusion_lambda,
               "lambda": study.best_lambda, "lambda_from": study.study, "lambda_split": cache.split,
               "lambda_transform": transform}
        out.append(new)
        recomputed.append(new)
    if not recomputed:
        return out, [f"λ from study {study.study}: no fused (V+A) cell of ours to recompute."]
    splits = sorted({c["lambda_split"] for c in recomputed})
    k = study.best_params.get("k")
    notes = [
        f"**V+A cells: λ = {_fmt_lambda(study.best_lambda)} from study `{study.study}`** (tuned on the {study.split} split"
        + (f", jointly with k = {k}" if k is not None else "")
        + f"; optimum on [{study.lam_interval[0]:.4f}, {study.lam_interval[1]:.4f}]; `{study.path}`), applied to each run's "
        f"cached scores of its reported split ({', '.join(splits)}) with the run's own transform and k. "
        "In parentheses: the run's own fixed λ and its value (as in table6_results.json)."
    ]
    if study.tuned_on_reported_split or study.split in splits:
        notes.append(
            f"**⚠ λ WAS TUNED ON THE REPORTED SPLIT** (study `{study.study}`: tune_on = {study.tune_on}, split = "
            f"{study.split}): the V+A numbers below were selected on the videos they are reported on and are optimistic."
        )
    transforms = sorted({c["lambda_transform"] for c in recomputed})
    if study.transform and any(t != study.transform for t in transforms):
        notes.append(
            f"The study tuned λ for the {study.transform} transform; some runs fuse with {', '.join(transforms)}: "
            "their λ is applied as it is."
        )
    return out, notes + checks


def table6_directions(cells: Sequence[Mapping[str, Any]], results: "str | Path | None" = None) -> "Optional[DirectionReport]":
    """The ablation directions of our Table 6 cells (:mod:`harness.directions`); None when none is measurable.

    With ``results`` each direction is also tested on the validation videos from its runs' cached scores
    (:func:`harness.significance.resolve_directions`); a cache that contradicts its cell leaves the
    directions untested, the reason in ``untested`` (the table is still written)."""
    from harness.directions import ablation_directions
    from harness.significance import resolve_directions

    report = ablation_directions(cells)
    if not report.total:
        return None
    return report if results is None else resolve_directions(report, cells, results, strict=False)


def run_table6(
    scale: str = "smoke",
    cluster: str = "local",
    results: str | Path = "results",
    tracking_uri: Optional[str] = None,
    spec_path: str | Path = TABLE6_SPEC,
    overrides: Sequence[str] = (),
    dry_run: bool = False,
    out: Any = None,
    lambda_from: "str | Path | StudyLambda | None" = None,
    **kwargs: Any,
) -> DriveResult:
    """``bikebench table6``: run Table 6 and write/print/log its results (see the module docstring).

    ``lambda_from``: a study (best.json path, study directory, study name under ``<results>/studies``,
    or a loaded :class:`harness.tuning.StudyLambda`) whose λ the fused cells of the table use; read
    and checked before anything is submitted.
    """
    from harness.tuning import StudyLambda, load_study_lambda

    out = out if out is not None else sys.stdout
    results = Path(results).resolve()
    study = None
    if lambda_from is not None:
        study = lambda_from if isinstance(lambda_from, StudyLambda) else load_study_lambda(lambda_from, results)
    spec = load_spec(spec_path, overrides)
    drive = run_specs([spec], scale=scale, cluster=cluster, results=results, tracking_uri=tracking_uri,
                      dry_run=dry_run, log=lambda m: print(m, file=out), **kwargs)
    if dry_run:
        return drive
    t_tables = time.perf_counter()
    results_path = results / TABLE6_RESULTS
    missing_path = results / TABLE6_MISSING
    document = drive.results_document(scale)
    directions = table6_directions(drive.cells, results)
    if directions is not None:
        document["directions"] = directions.to_dict()
    atomic_write_json(results_path, document)
    atomic_write_json(results / f"table6_results_{scale}.json", document)
    atomic_write_json(missing_path, drive.missing)
    table_cells: list[dict[str, Any]] = list(drive.cells)
    notes: list[str] = []
    artifacts = [results_path, missing_path, results / TABLE6_MARKDOWN]
    if study is not None:
        table_cells, notes = study_lambda_cells(drive.cells, results, study)
        atomic_write_json(results / TABLE6_LAMBDA, [c for c in table_cells if "fixed_value" in c])
        artifacts.append(results / TABLE6_LAMBDA)
    else:
        (results / TABLE6_LAMBDA).unlink(missing_ok=True)  # a previous --lambda-from's cells no longer match table6.md
    text = render_table6(table_cells, drive.missing, scale, notes=notes)
    if directions is not None:
        text = text.rstrip("\n") + "\n\n" + directions.to_markdown()
    atomic_write_text(results / TABLE6_MARKDOWN, text)
    page, tex = render_table6_html_latex(table_cells, scale, notes)
    for name, body in ((TABLE6_HTML, page), (TABLE6_LATEX, tex)):
        if body:
            atomic_write_text(results / name, body)
            artifacts.append(results / name)
    from harness.figures import table6_pictures

    # bars per sub-table (<results>/figures/table6/) and table6.html as the full report: the tables, the
    # directions and every run's pictures, embedded (harness.figures)
    html_path = table6_pictures(results, drive, scale, directions, log=lambda m: print(m, file=out), cells=table_cells,
                                notes=notes)
    if html_path is not None and html_path not in artifacts:
        artifacts.append(html_path)
    print(text, file=out)
    if kwargs.get("track", True) and drive.tracking_error is None:
        try:
            metrics: dict[str, float] = directions.metrics() if directions is not None else {}
            figures = results / "figures" / "table6"
            log_table_parent(results, tracking_uri, spec, scale, table_cells, artifacts, metrics,
                             figures if figures.is_dir() else None)
        except Exception as exc:  # noqa: BLE001
            print(f"MLflow: could not attach the table ({exc}); `bikebench sync` does not attach tables", file=out)
    from harness.drive import format_timings, next_steps

    drive.timings["tables_s"] = time.perf_counter() - t_tables
    print("\n" + format_timings(drive.timings, drive.outcomes, kwargs.get("parallelism", 1), cluster), file=out)
    print(next_steps(results, tracking_uri, html_path, track=kwargs.get("track", True)), file=out)
    return drive
