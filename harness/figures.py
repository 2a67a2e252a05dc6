"""Pictures that need harness code, and the self-contained HTML report of Table 6.

* :func:`lambda_figure`: the exact accuracy-vs-λ curve of a fused run (``harness.lambda_exact`` on the
  run's cached scores of its ``eval.split``), ``<run_dir>/figures/lambda.{png,json}`` beside the
  pictures the job drew itself (``bike.engine.figures``); the run's own λ is marked.
* :func:`table_bars`: ours against the paper, one bar chart per sub-table of a table (``6a`` … ``6i``),
  ``<results>/figures/<table>/<sub-table>.{png,json}``.
* :func:`write_table6_html`: ``<results>/table6.html``, one file with every picture embedded (base64
  PNG; no external ``src`` or ``href``): the table beside the paper (``harness.tables``), the ablation
  directions (``harness.directions``), the bars, and each run's pictures.

matplotlib draws on its Agg canvas (headless). Every PNG has a JSON beside it with the numbers drawn.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from bike.engine.figures import figures_dir, save_figure
from bike.rundir import CONFIG_FILE, FIGURES_DIR

LAMBDA_FIGURE = "lambda"
TABLE6_HTML = "table6.html"  # harness.table6.TABLE6_HTML


# ------------------------------------------------------------------------------ λ curve of a run
def lambda_figure(run_dir: str | Path) -> Optional[Path]:
    """``<run_dir>/figures/lambda.{png,json}`` for a run with attribute scores on a single-label split
    (else None): the exact top-1 of ``λ·T(S_V) + (1 − λ)·T(S_A)`` over λ ∈ [0, 1]."""
    from bike.config import RunConfig
    from bike.engine.caches import CacheError, load_score_cache
    from harness.lambda_exact import curve_from_intervals, transform_scores, true_class_intervals

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        return None
    config = RunConfig.from_yaml(run_dir / CONFIG_FILE)
    try:
        cache = load_score_cache(run_dir, config.eval.split)
    except CacheError:
        return None
    if cache.attr_scores is None or cache.multi_label:
        return None
    transform = config.fusion.transform
    a = transform_scores(np.asarray(cache.video_scores), transform, score_kind=cache.score_kind)
    b = transform_scores(np.asarray(cache.attr_scores), transform)
    labels = np.asarray(cache.labels, dtype=np.int64)
    curve = curve_from_intervals(true_class_intervals(a, b, labels), None, metric="top1", transform=transform)
    lam = config.fusion_lambda
    data = {**curve.to_dict(), "split": cache.split, "lambda": lam, "value_at_lambda": float(curve.at(lam)[0]),
            "note": "values: top-1 (fraction) on each open interval between breakpoints; point_values: at the breakpoints"}
    directory = figures_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    curve.plot(directory / f"{LAMBDA_FIGURE}.png", mark=lam,
               title=f"exact top-1 vs λ, {cache.split} (transform {transform}, N = {curve.n})")
    from bike.rundir import atomic_write_json

    atomic_write_json(directory / f"{LAMBDA_FIGURE}.json", data)
    return directory / f"{LAMBDA_FIGURE}.png"


def lambda_figures(run_dirs: Sequence[str | Path], log=None) -> list[Path]:
    """:func:`lambda_figure` of each run directory (a failure is reported through ``log``, not raised)."""
    out = []
    for d in run_dirs:
        try:
            p = lambda_figure(d)
        except Exception as exc:  # noqa: BLE001 - pictures never fail a table
            if log is not None:
                log(f"[{Path(d).name}] λ curve not drawn: {type(exc).__name__}: {exc}")
            continue
        if p is not None:
            out.append(p)
    return out


# ------------------------------------------------------------------------------ ours vs paper
def table_bars(cells: Sequence[Mapping[str, Any]], directory: str | Path, tables: Sequence[str]) -> list[Path]:
    """One bar chart per sub-table: for every (row, column) the paper's number and ours."""
    from harness.registry import load_registry
    from harness.tables import build_comparison
    from bike.engine.figures import _figure

    registry = load_registry()
    directory = Path(directory)
    out = []
    for table in tables:
        cmp = build_comparison(registry, list(cells), table)
        bars = []
        for row in cmp.rows:
            for col, c in zip(cmp.columns, row.cells):
                if c.paper is None and c.ours is None:
                    continue
                bars.append({"row": row.id, "label": row.label + (f" [{row.variant}]" if row.variant else ""),
                             "column": col.id, "column_label": col.label,
                             "paper": None if c.paper is None else float(c.paper.value),
                             "ours": None if c.ours is None else float(c.ours.value),
                             "run_id": None if c.ours is None else c.ours.run_id})
        if not any(b["ours"] is not None for b in bars):
            continue
        n = len(bars)
        fig = _figure(max(6.0, 0.55 * n + 2.0), 4.2)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(n)
        ax.bar(x - 0.2, [b["paper"] or 0.0 for b in bars], 0.4, color="0.6", label="paper")
        ax.bar(x + 0.2, [b["ours"] or 0.0 for b in bars], 0.4, color="C0", label="ours")
        labels = [b["label"] + ("" if len(cmp.columns) == 1 else f"\n{b['column_label']}") for b in bars]
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("%")
        ax.set_title(f"Table {table}: {cmp.table.title}"[:110], fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(save_figure(fig, {"table": table, "bars": bars}, directory, table))
    return out


# ------------------------------------------------------------------------------ the HTML report
def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}
table.bike-compare{border-collapse:collapse;margin:1em 0}
table.bike-compare td,table.bike-compare th{border:1px solid #ccc;padding:2px 6px;font-size:13px}
td.pos{color:#070}td.neg{color:#a00}caption{text-align:left;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:4px}details{margin:.5em 0}"""


def write_table6_html(
    results: str | Path,
    cells: Sequence[Mapping[str, Any]],
    missing: Sequence[Mapping[str, Any]],
    run_dirs: Mapping[str, Sequence[str]],
    scale: str,
    bar_pngs: Sequence[Path] = (),
    directions_markdown: Optional[str] = None,
    tables: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> Path:
    """``<results>/table6.html``: self-contained (every picture a base64 ``data:`` URI).

    ``run_dirs``: run directory -> the ``spec.variant`` names that asked for it (their pictures follow)."""
    from harness.registry import load_registry
    from harness.rundir import atomic_write_text
    from harness.tables import render_html

    e = html.escape
    results = Path(results)
    registry = load_registry()
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
             f"<title>Table 6 ({e(scale)} scale): ours beside the paper</title>", f"<style>{_STYLE}</style></head><body>",
             f"<h1>Table 6: ablation studies — ours ({e(scale)} scale) beside the paper</h1>"]
    parts += [f'<p class="note">{e(n)}</p>' for n in notes]
    for table in tables:
        try:
            parts.append(render_html(registry, list(cells), table))
        except Exception as exc:  # noqa: BLE001 - a table the registry cannot render is named, not fatal
            parts.append(f"<p>Table {e(table)}: not rendered ({e(type(exc).__name__)}: {e(str(exc))})</p>")
    if missing:
        parts.append("<h2>Cells without a value of ours</h2><ul>")
        parts += [f"<li>{e(str(m['table']))} <code>{e(str(m['row']))}</code> / <code>{e(str(m['column']))}</code>: "
                  f"{e(str(m.get('reason', '')))}</li>" for m in missing]
        parts.append("</ul>")
    if directions_markdown:
        parts.append("<h2>Ablation directions</h2><pre>" + e(directions_markdown) + "</pre>")
    if bar_pngs:
        parts.append("<h2>Ours against the paper</h2>")
        parts += [_img(Path(p), Path(p).stem) for p in bar_pngs]
    parts.append("<h2>Pictures of each run</h2>")
    for run_dir, names in run_dirs.items():
        pngs = sorted(Path(run_dir, FIGURES_DIR).glob("*.png"))
        if not pngs:
            continue
        parts.append(f"<details><summary>{e(', '.join(names))} (run {e(Path(run_dir).name)}): "
                     f"{e(', '.join(p.stem for p in pngs))}</summary>")
        parts += [_img(p, f"{Path(run_dir).name} {p.stem}") for p in pngs]
        parts.append("</details>")
    parts.append("</body></html>")
    path = results / TABLE6_HTML
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def table6_pictures(results: str | Path, drive: Any, scale: str, directions: Any = None, log=None,
                    cells: Optional[Sequence[Mapping[str, Any]]] = None, notes: Sequence[str] = ()) -> Optional[Path]:
    """After Table 6's runs (whose λ curves ``harness.drive.run_specs`` drew): the bars per sub-table
    (``<results>/figures/table6/``) and ``<results>/table6.html``. Returns the HTML path (None on failure,
    reported through ``log``). ``cells``: the table's cells (default ``drive.cells``; e.g. recomputed at a
    study's λ), ``notes``: lines under the title."""
    from harness.tables import TABLE6_IDS

    results = Path(results)
    try:
        done = [r for r in drive.plan.runs if (Path(r.run_dir) / "result.json").is_file()]  # λ curves: run_specs drew them
        cells = list(drive.cells if cells is None else cells)
        bars = table_bars(cells, results / FIGURES_DIR / "table6", TABLE6_IDS)
        runs = {str(r.run_dir): [f"{s}.{v}" for s, v in r.requested_by] for r in done}
        return write_table6_html(results, cells, drive.missing, runs, scale, bars,
                                 directions.to_markdown() if directions is not None else None, TABLE6_IDS, notes)
    except Exception as exc:  # noqa: BLE001 - the table is written whatever the pictures do
        if log is not None:
            log(f"pictures of Table 6 not written: {type(exc).__name__}: {exc}")
        return None


__all__ = ["lambda_figure", "lambda_figures", "table6_pictures", "table_bars", "write_table6_html"]
