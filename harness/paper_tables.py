"""Every table of the paper from specs: ``bikebench table ID`` (:func:`run_table`) and ``bikebench paper``
(:func:`run_paper`).

A paper table (:class:`PaperTable`, :data:`PAPER_TABLES` in the paper's order) is a set of registry tables
(``harness/data/paper_numbers.yaml``) and the shipped specs whose variants fill their cells. Running tables
takes from each spec only the variants that fill a cell of the tables asked for (and the variants of the
same spec they start from); cross-spec ``init_from`` brings in the runs they depend on, and runs of the
same configuration are one run (:mod:`harness.expand`), so the Kinetics-400 ViT-L/14 models are trained
once for Tables 1, 3, 5, A.3 and the zoo. All the tables asked for are one plan through
:func:`harness.drive.run_specs` (one submission, waves and dependencies across tables).

For each table ``ID`` it writes, under the results directory:

* ``table<ID>_results.json`` (and ``table<ID>_results_<scale>.json``): ``{"scale", "world", "cells"}``,
  the format ``bikebench check`` reads; ``table<ID>_missing.json``: cells without a value, with the reason;
* ``table<ID>.md``, ``table<ID>.tex``, ``table<ID>.html``: ours beside the paper (:mod:`harness.tables`),
  under the table's smoke-scale caption (what stands in for what);

and attaches them to an MLflow parent run of (``table<ID>``, scale) whose children are the table's runs.
``bikebench table 6`` is ``bikebench table6`` (:func:`harness.table6.run_table6`). :func:`run_paper`
does every table and writes ``paper.md``, ``paper.html`` (one section per table in the paper's order and a
summary: published numbers reproduced within the tolerance) and ``paper_results.json`` (every cell, for
``bikebench check --results results/paper_results.json``).

With ``dry_run`` nothing runs: the plan is printed, then its cost (:func:`plan_cost`): GPUs x time limit
summed over the runs, per table (a run shared by tables counts in each) and in total (each run once).
"""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TextIO

from bike.config import ConfigError
from harness.drive import DriveResult, run_specs
from harness.rundir import RunDir, atomic_write_json, atomic_write_text
from harness.spec import InitFromSpec, Spec, load_spec
from harness.spec.models import parse_slurm_time

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO_ROOT / "experiments"
PAPER_MARKDOWN = "paper.md"
PAPER_HTML = "paper.html"
PAPER_RESULTS = "paper_results.json"
#: Metrics of the registry that are accuracies a run measures (GFLOPs and parameter counts are not).
ACCURACY_METRICS = ("top1", "top5", "mAP", "mAP_running", "mca")


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper: its registry tables, the specs that fill them, and its smoke stand-ins."""

    id: str
    title: str
    registry_tables: tuple[str, ...]
    specs: tuple[str, ...]
    smoke: str = ""

    @property
    def experiment(self) -> str:
        """The MLflow experiment of its parent run (``table1``, ..., ``tableA3``, ``zoo``, ``text``)."""
        return self.id if not self.id[0].isdigit() and self.id != "A3" else f"table{self.id}"

    def spec_paths(self) -> list[Path]:
        return [EXPERIMENTS / s for s in self.specs]


_TABLE6_IDS = ("6a", "6b", "6c", "6d", "6e", "6f", "6g", "6h", "6i")
PAPER_TABLES: tuple[PaperTable, ...] = (
    PaperTable("1", "Table 1: Kinetics-400, comparison with the state of the art", ("1",), ("table1.yaml",),
               "Smoke: the world's general split and its tiny CLIP stand in for Kinetics-400 and ViT-L/14; the 16-frame "
               "row runs at 16 frames, tested 4x3. The 336-px rows are not run (the world has no weights for a "
               "second backbone); GFLOPs and parameters are published numbers only."),
    PaperTable("2", "Table 2: ActivityNet", ("2",), ("anet.yaml",),
               "Smoke: the world's novel compositions (few-shot split, every training video) stand in for "
               "ActivityNet and the tiny CLIP for ViT-L/14-336 (the world has one backbone at one resolution), "
               "fine-tuned at 16 frames from the Kinetics-400 stand-in; mAP needs a single-label mAP in result.json."),
    PaperTable("3", "Table 3: Charades (multi-label)", ("3",), ("charades.yaml",),
               "Smoke: the world's multi-label split (two actions per video) stands in for Charades; the released "
               "test's running mAP is compared."),
    PaperTable("4", "Table 4: few-shot recognition", ("4",), ("few_shot.yaml",),
               "Smoke: K-shot draws (K = 1, 2, 5; one draw each, train.few_shot_seed 0) from the world's novel "
               "split stand in for HMDB-51, UCF-101, ActivityNet and Kinetics-400, so each K is one shared run."),
    PaperTable("5", "Table 5: zero-shot recognition", ("5",), ("zero_shot_half.yaml", "zero_shot_full.yaml"),
               "Smoke: the world's held-out compositions stand in for UCF-101, HMDB-51 and ActivityNet (one shared "
               "run per protocol); half-class cells are mean ± std over 10 random splits. Kinetics-600 (the mean "
               "of its three 160-class splits) is not run: the world has no Kinetics-600-style split files."),
    PaperTable("6", "Table 6: ablations on Kinetics-400", _TABLE6_IDS, ("table6.yaml",),
               "Smoke: the world's general split, its tiny CLIP and the world lexicons stand in for Kinetics-400, "
               "ViT-B/32 and the K400 / ImageNet-1K class names; the ViT-B/16 and ViT-L/14 rows of 6i are not run."),
    PaperTable("A3", "Table A.3: UCF-101 and HMDB-51 fine-tuning", ("A3",), ("finetune_ucf_hmdb.yaml",),
               "Smoke: the world's novel compositions (few-shot split, every training video) stand in for both "
               "UCF-101 and HMDB-51 (one shared run), fine-tuned at 16 frames from the Kinetics-400 stand-in; the "
               "336-px row is not run (the world has no weights for a second backbone)."),
    PaperTable("text", "Numbers quoted in the text", ("text",), ("k400_vitb.yaml",),
               "The runs of Table 6 (same configurations, same run ids); smoke stand-ins as Table 6."),
    PaperTable("zoo", "The authors' model zoo (README) and released training logs",
               ("readme_k400", "readme_anet", "readme_charades", "readme_ucf_hmdb", "readme_zero_shot", "logs_k400"),
               ("zoo.yaml", "zero_shot_half.yaml", "zero_shot_full.yaml", "k400_vitl14.yaml", "k400_vitb.yaml"),
               "Smoke: the released checkpoints are full-scale models the world has no counterpart of, so their "
               "rows are not run; the zero-shot rows and the training logs' rows are our own runs (Table 5's and "
               "Table 6's stand-ins, the 16-frame K400 stand-in for the 16-frame logs)."),
)
TABLE_IDS: tuple[str, ...] = tuple(t.id for t in PAPER_TABLES)


def paper_table(table_id: str) -> PaperTable:
    """The table ``table_id`` (``1``–``6``, ``A3``, ``text``, ``zoo``); a clear error otherwise."""
    for t in PAPER_TABLES:
        if t.id.lower() == str(table_id).strip().lower():
            return t
    raise ConfigError(f"command line: table {table_id!r}: no such table; expected one of {', '.join(TABLE_IDS)}")


# ------------------------------------------------------------------------------------- the plan
def _needed_variants(spec: Spec, registry_tables: set[str]) -> set[str]:
    """Variants of ``spec`` filling a cell of ``registry_tables`` (or paper-only cells' spec) and the
    variants of the same spec they start from."""
    wanted = {name for name, v in spec.variants.items() if any(c.table in registry_tables for c in v.cells)}
    stack = list(wanted)
    while stack:
        ref = spec.variants[stack.pop()].init_from
        if isinstance(ref, InitFromSpec) and ref.spec is None and ref.variant in spec.variants and ref.variant not in wanted:
            wanted.add(ref.variant)
            stack.append(ref.variant)
    return wanted


def table_specs(tables: Sequence[PaperTable], overrides: Sequence[str] = ()) -> list[Spec]:
    """The specs of ``tables``, each keeping only the variants those tables need (its paper-only cells of
    other tables dropped); a spec shared by tables appears once."""
    by_path: dict[Path, set[str]] = {}
    order: list[Path] = []
    for t in tables:
        for path in t.spec_paths():
            if path not in by_path:
                by_path[path] = set()
                order.append(path)
            by_path[path] |= set(t.registry_tables)
    out = []
    for path in order:
        spec = load_spec(path, list(overrides))
        keep = _needed_variants(spec, by_path[path])
        if not keep:
            continue
        view = spec.model_copy(update={
            "variants": {k: v for k, v in spec.variants.items() if k in keep},
            "paper_only": [c for c in spec.paper_only if c.table in by_path[path]],
        })
        out.append(view)
    return out


@dataclass
class RunCost:
    run_id: str
    label: str
    gpus: int
    minutes: float
    requeues: int

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.minutes / 60.0


def run_cost(run: Any) -> RunCost:
    """GPUs (``slurm.gpus_per_node`` x ``slurm.nodes``) and time limit (``slurm.time``, else ``timeout_min``)
    of one planned run, from its resolved resources."""
    res = run.resources
    gpus = int(res.slurm.gpus_per_node or 0) * int(res.slurm.nodes or 1)
    minutes = float(parse_slurm_time(res.slurm.time)) if res.slurm.time is not None else float(res.timeout_min or 0)
    label = ", ".join(f"{s}.{v}" for s, v in run.requested_by)
    return RunCost(run.run_id, label, gpus, minutes, int(res.max_num_timeout or 0))


def _closure(plan: Any, run_ids: set[str]) -> set[str]:
    out, stack = set(), list(run_ids)
    while stack:
        rid = stack.pop()
        if rid in out:
            continue
        out.add(rid)
        stack.extend(plan.by_id[rid].dependencies)
    return out


def table_runs(plan: Any, table: PaperTable) -> list[str]:
    """Run ids a table needs: the runs filling its cells and what they start from, in plan order."""
    direct = {r.run_id for r in plan.runs if any(c.table in table.registry_tables for c in r.cells)}
    needed = _closure(plan, direct)
    return [r.run_id for r in plan.runs if r.run_id in needed]


def plan_cost(plan: Any, tables: Sequence[PaperTable]) -> dict[str, Any]:
    """``{"tables": {id: {"runs", "gpu_hours"}}, "total": {"runs", "gpu_hours", "gpu_hours_with_requeues"}}``:
    GPUs x time limit per run; a run shared by tables counts in each table and once in the total."""
    costs = {r.run_id: run_cost(r) for r in plan.runs}
    per_table = {}
    for t in tables:
        ids = table_runs(plan, t)
        per_table[t.id] = {"runs": len(ids), "gpu_hours": round(sum(costs[i].gpu_hours for i in ids), 2)}
    total = sum(c.gpu_hours for c in costs.values())
    worst = sum(c.gpu_hours * (1 + c.requeues) for c in costs.values())
    return {"tables": per_table, "runs": [c.__dict__ | {"gpu_hours": round(c.gpu_hours, 2)} for c in costs.values()],
            "total": {"runs": len(costs), "gpu_hours": round(total, 2), "gpu_hours_with_requeues": round(worst, 2)}}


def not_run_text(plan: Any, tables: Sequence[PaperTable]) -> str:
    """The cells of ``tables`` no run of the plan fills, one line per variant with its cells and reason
    (e.g. a released checkpoint to download first, a backbone the embedded world has no weights for)."""
    wanted = {rt for t in tables for rt in t.registry_tables}
    by_variant: dict[tuple[str, Optional[str], str], list[str]] = {}
    for c in plan.not_run:
        if c.table in wanted:
            by_variant.setdefault((c.spec, c.variant, c.reason), []).append(f"{c.table}/{c.row}/{c.column}")
    if not by_variant:
        return "Every cell of the table(s) has a run in the plan."
    lines = [f"Not run ({sum(len(v) for v in by_variant.values())} cell(s)):"]
    for (spec, variant, reason), cells in by_variant.items():
        lines.append(f"  {spec}.{variant or '(paper only)'} [{', '.join(cells)}]: {reason}")
    return "\n".join(lines)


def cost_text(cost: Mapping[str, Any], tables: Sequence[PaperTable]) -> str:
    lines = ["", "Cost (GPUs x time limit per run; a run shared by tables counts in each table, once in the total):"]
    for t in tables:
        c = cost["tables"][t.id]
        lines.append(f"  table {t.id:5s} {c['runs']:3d} run(s) {c['gpu_hours']:10.1f} GPU-hours")
    tot = cost["total"]
    lines.append(f"  total       {tot['runs']:3d} run(s) {tot['gpu_hours']:10.1f} GPU-hours "
                 f"(up to {tot['gpu_hours_with_requeues']:.1f} if every run uses all its timeout requeues)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- rendering
@dataclass
class TableOutput:
    table: PaperTable
    cells: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    markdown: str = ""
    html: str = ""
    latex: str = ""


def _split(drive: DriveResult, table: PaperTable) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    keep = set(table.registry_tables)
    return [c for c in drive.cells if c["table"] in keep], [m for m in drive.missing if m["table"] in keep]


def render_outputs(table: PaperTable, cells: Sequence[Mapping[str, Any]], missing: Sequence[Mapping[str, Any]],
                   scale: str, heading_level: int = 1) -> TableOutput:
    """Markdown, HTML and LaTeX of one paper table: its caption (the smoke stand-ins at smoke scale), each
    registry table ours beside the paper, and the cells without a value of ours with the reason."""
    from harness.registry import load_registry
    from harness.tables import build_comparison, comparison_to_html, comparison_to_latex, comparison_to_markdown, scale_note

    registry = load_registry()
    h = "#" * heading_level
    note = scale_note([scale])
    md = [f"{h} {table.title} — ours ({scale} scale) beside the paper", ""]
    ht = [f"<section id=\"table-{html.escape(table.id)}\"><h{heading_level + 1}>{html.escape(table.title)} — ours "
          f"({html.escape(scale)} scale) beside the paper</h{heading_level + 1}>"]
    tex = []
    if scale != "full" and table.smoke:
        md += [f"> {table.smoke}", ""]
        ht.append(f"<p class=\"stand-ins\">{html.escape(table.smoke)}</p>")
    if note:
        md += [f"> {note}", ""]
        ht.append(f"<p class=\"note\">{html.escape(note)}</p>")
    for rt in table.registry_tables:
        cmp = build_comparison(registry, list(cells), rt)
        cmp.notes = [n for n in cmp.notes if n != note]
        md.append(comparison_to_markdown(cmp, heading_level=heading_level + 1))
        ht.append(comparison_to_html(cmp))
        tex.append(comparison_to_latex(cmp, label=f"tab:{rt}"))
    if missing:
        md += [f"{h}# Cells without a value of ours", ""]
        md += [f"- {m['table']} `{m['row']}` / `{m['column']}`: {m['reason']}" for m in missing]
        md.append("")
        ht.append("<h4>Cells without a value of ours</h4><ul>" + "".join(
            f"<li>{html.escape(str(m['table']))} {html.escape(m['row'])} / {html.escape(m['column'])}: "
            f"{html.escape(str(m['reason']))}</li>" for m in missing) + "</ul>")
    ht.append("</section>")
    return TableOutput(table, list(cells), list(missing), "\n".join(md), "\n".join(ht) + "\n", "\n".join(tex))


def reproduced_summary(cells: Sequence[Mapping[str, Any]], tolerance: Optional[float] = None) -> dict[str, int]:
    """Published BIKE accuracies (profile official, not printed gains): how many exist, how many have a
    value of ours, how many of ours lie within ``tolerance`` points of the paper (default: the paper
    tolerance of ``bikebench check``)."""
    from harness.check import DEFAULT_PAPER_TOLERANCE
    from harness.registry import load_registry

    tol = DEFAULT_PAPER_TOLERANCE if tolerance is None else tolerance
    ours = {f"{c['table']}/{c['row']}/{c['column']}": float(c["value"]) for c in cells}
    published = [e for e in load_registry() if published_accuracy(e)]
    with_value = [e for e in published if e.key in ours]
    within = [e for e in with_value if abs(ours[e.key] - e.value) <= tol + 1e-9]
    return {"published": len(published), "ours": len(with_value), "within": len(within)}


def published_accuracy(entry: Any) -> bool:
    """A published BIKE accuracy: method BIKE, profile official, an accuracy metric, not a printed gain."""
    return entry.method == "BIKE" and entry.profile == "official" and entry.metric in ACCURACY_METRICS and not entry.is_gain


_HTML_HEAD = ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>"
              "body{{font-family:sans-serif;max-width:80em;margin:auto}} table{{border-collapse:collapse;margin:1em 0}}"
              " td,th{{border:1px solid #ccc;padding:2px 6px}} td.pos{{color:#070}} td.neg{{color:#a00}}"
              " caption{{text-align:left}}</style></head><body>\n")


# ------------------------------------------------------------------------------------- driving
def _write_table(results: Path, out: TableOutput, drive: DriveResult, scale: str) -> list[Path]:
    tid = out.table.id
    doc = {"scale": scale, **({"world": drive.world} if drive.world is not None else {}), "cells": out.cells}
    if tid == "6":
        from harness.table6 import table6_directions

        directions = table6_directions(out.cells, results)
        if directions is not None:
            doc["directions"] = directions.to_dict()
            out.markdown = out.markdown.rstrip("\n") + "\n\n" + directions.to_markdown()
    paths = {"results": results / f"table{tid}_results.json", "missing": results / f"table{tid}_missing.json",
             "md": results / f"table{tid}.md", "tex": results / f"table{tid}.tex", "html": results / f"table{tid}.html"}
    atomic_write_json(paths["results"], doc)
    atomic_write_json(results / f"table{tid}_results_{scale}.json", doc)
    atomic_write_json(paths["missing"], out.missing)
    atomic_write_text(paths["md"], out.markdown)
    atomic_write_text(paths["tex"], out.latex)
    atomic_write_text(paths["html"], _HTML_HEAD.format(title=html.escape(out.table.title)) + out.html + "</body></html>\n")
    return list(paths.values())


def _log_table(results: Path, tracking_uri: Optional[str], table: PaperTable, drive: DriveResult, scale: str,
               artifacts: Sequence[Path], metrics: Mapping[str, float], out: TextIO) -> None:
    """The table's MLflow parent run (experiment ``table<ID>``) with the table's runs as children."""
    try:
        from harness.tracking import Tracker

        tracker = Tracker(results, tracking_uri)
        parent = tracker.parent_run(table.experiment, scale)
        for rid in table_runs(drive.plan, table):
            run = drive.plan.by_id[rid]
            spec, variant = run.requested_by[0]
            tracker.log_run_dir(RunDir(run.run_dir), table.experiment, f"{spec}.{variant}", scale, parent)
        from harness.expand import code_version

        cells, _ = _split(drive, table)
        params = {"table": table.id, "specs": ",".join(table.specs), "scale": scale,
                  "git_commit": code_version().get("commit") or ""}
        figures = results / "figures" / f"table{table.id}"
        # the parent is the table: each cell a metric (ours, Δ to the paper), the files, ended now
        tracker.log_table(table.experiment, scale, cells, artifacts, params=params, metrics=metrics,
                          figures=figures if figures.is_dir() else None)
    except Exception as exc:  # noqa: BLE001 - a finished table is kept when MLflow fails
        print(f"MLflow: could not log table {table.id} ({exc}); `bikebench sync` replays the runs, not the table", file=out)


def run_tables(
    tables: Sequence[PaperTable],
    scale: str = "smoke",
    results: str | Path = "results",
    tracking_uri: Optional[str] = None,
    dry_run: bool = False,
    overrides: Sequence[str] = (),
    out: Optional[TextIO] = None,
    **kwargs: Any,
) -> tuple[DriveResult, list[TableOutput]]:
    """Run ``tables`` as one plan; write and log each table (see the module docstring)."""
    out = out if out is not None else sys.stdout
    results = Path(results).resolve()
    specs = table_specs(tables, overrides)
    drive = run_specs(specs, scale=scale, results=results, tracking_uri=tracking_uri, dry_run=dry_run,
                      log=lambda m: print(m, file=out), **kwargs)
    if dry_run:
        if kwargs.get("show", "text") == "text":
            print(not_run_text(drive.plan, tables), file=out)
            print(cost_text(plan_cost(drive.plan, tables), tables), file=out)
        return drive, []
    outputs = []
    for t in tables:
        cells, missing = _split(drive, t)
        o = render_outputs(t, cells, missing, scale)
        artifacts = _write_table(results, o, drive, scale)
        summary = reproduced_summary(cells)
        if kwargs.get("track", True) and drive.tracking_error is None:
            _log_table(results, tracking_uri, t, drive, scale, artifacts,
                       {"cells_ours": len(cells), "cells_missing": len(missing), "reproduced_within_tolerance": summary["within"]}, out)
        outputs.append(o)
    return drive, outputs


def run_table(table_id: str, scale: str = "smoke", out: Optional[TextIO] = None, **kwargs: Any) -> DriveResult:
    """``bikebench table ID``: Table 6 is :func:`harness.table6.run_table6`; the others :func:`run_tables`."""
    table = paper_table(table_id)
    out = out if out is not None else sys.stdout
    if table.id == "6":
        from harness.table6 import run_table6

        return run_table6(scale=scale, out=out, **kwargs)
    drive, outputs = run_tables([table], scale=scale, out=out, **kwargs)
    for o in outputs:
        print(o.markdown, file=out)
    return drive


def run_paper(scale: str = "smoke", results: str | Path = "results", out: Optional[TextIO] = None,
              tables: Optional[Sequence[str]] = None, **kwargs: Any) -> DriveResult:
    """``bikebench paper``: every table as one plan; ``paper.md``, ``paper.html`` and ``paper_results.json``."""
    out = out if out is not None else sys.stdout
    results = Path(results).resolve()
    chosen = [paper_table(t) for t in tables] if tables else list(PAPER_TABLES)
    drive, outputs = run_tables(chosen, scale=scale, results=results, out=out, **kwargs)
    if kwargs.get("dry_run"):
        return drive
    all_cells = [c for o in outputs for c in o.cells]
    summary = reproduced_summary(all_cells)
    head = (f"Published BIKE accuracies: {summary['published']}; ours for {summary['ours']}; within "
            f"±{_tol()} points of the paper: {summary['within']} of {summary['published']}.")
    if scale != "full":
        head += f" Ours are {scale}-scale stand-ins (each table's caption says what stands in for what): the count is for tracking."
    md = [f"# BIKE (CVPR 2023): every table, ours ({scale} scale) beside the paper", "", head, "",
          "Each table: paper | ours | Δ = ours − paper per column; – where a number is missing.", ""]
    md += ["## Contents", ""] + [f"- [{o.table.title}](#table-{o.table.id.lower()})" for o in outputs] + [""]
    for o in outputs:
        md.append(f'<a id="table-{o.table.id.lower()}"></a>\n')
        md.append(render_outputs(o.table, o.cells, o.missing, scale, heading_level=2).markdown)
    page = _HTML_HEAD.format(title="BIKE: every table") + f"<h1>BIKE (CVPR 2023): every table, ours ({html.escape(scale)} scale) beside the paper</h1>\n"
    page += f"<p class=\"summary\">{html.escape(head)}</p>\n" + "".join(
        render_outputs(o.table, o.cells, o.missing, scale, heading_level=2).html for o in outputs) + "</body></html>\n"
    atomic_write_text(results / PAPER_MARKDOWN, "\n".join(md))
    atomic_write_text(results / PAPER_HTML, page)
    doc = {"scale": scale, **({"world": drive.world} if drive.world is not None else {}), "cells": all_cells}
    atomic_write_json(results / PAPER_RESULTS, doc)
    print("\n".join(md), file=out)
    print(f"wrote {results / PAPER_MARKDOWN}, {results / PAPER_HTML}, {results / PAPER_RESULTS}", file=out)
    return drive


def _tol() -> str:
    from harness.check import DEFAULT_PAPER_TOLERANCE

    return f"{DEFAULT_PAPER_TOLERANCE:g}"


def coverage() -> dict[str, Any]:
    """Every published BIKE accuracy of the registry: the shipped spec variant that fills it, or the spec's
    paper-only reason. ``{"cells": {key: "spec.variant"}, "paper_only": {key: reason}, "uncovered": [keys]}``."""
    from harness.registry import load_registry

    filled: dict[str, str] = {}
    paper_only: dict[str, str] = {}
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        spec = load_spec(path)
        for name, v in spec.variants.items():
            for c in v.cells:
                filled.setdefault(f"{c.table}/{c.row}/{c.column}", f"{spec.name}.{name}")
        for c in spec.paper_only:
            paper_only.setdefault(f"{c.table}/{c.row}/{c.column}", c.note)
    published = [e.key for e in load_registry() if published_accuracy(e)]
    return {"cells": {k: filled[k] for k in published if k in filled},
            "paper_only": {k: paper_only[k] for k in published if k not in filled and k in paper_only},
            "uncovered": [k for k in published if k not in filled and k not in paper_only],
            "total": len(published)}
