"""Render our numbers beside the paper's, with the difference, as Markdown, LaTeX or HTML.

Input: the :class:`~harness.registry.Registry` (layout and published numbers) and our results (cell
dicts ``{table, row, column, value, std?, scale?, run_id?, variant?}`` or
:class:`~harness.cells.ResultCell`). Each paper column becomes three: *paper*, *ours* and
*Δ = ours − paper*. Missing numbers are shown as "–". Rows follow the paper's order; other variants
of a row (``variant`` set) follow their paper row, and rows the paper does not have come last.

A cell of ours recomputed at another fusion λ than its run's (``harness.table6.study_lambda_cells``:
fields ``fixed_value`` and ``fixed_lambda`` beside ``value``) shows the run's own value in parentheses,
e.g. ``75.0 (λ=0.6: 74.0)``; Δ compares the first value with the paper.

When any of our cells is not full scale (e.g. the smoke-scale miniature world), a note under the
title says so: the paper column always holds the published full-scale number and Δ is shown for
tracking only.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional, Sequence, Union

from harness.cells import FULL_SCALE, ResultCell, coerce_results, derive_gain_cells
from harness.registry import ColumnSpec, PaperEntry, Registry, TableSpec

MISSING = "–"
TABLE6_IDS: tuple[str, ...] = ("6a", "6b", "6c", "6d", "6e", "6f", "6g", "6h", "6i")
Format = Literal["markdown", "latex", "html"]
ResultsInput = Sequence[Union[ResultCell, Mapping[str, object]]]


@dataclass(frozen=True)
class CellView:
    """One paper cell beside ours. ``delta = ours - paper`` when both exist."""

    paper: Optional[PaperEntry]
    ours: Optional[ResultCell]
    decimals: int

    @property
    def delta(self) -> Optional[float]:
        if self.paper is None or self.ours is None:
            return None
        return self.ours.value - self.paper.value

    def paper_text(self) -> str:
        return MISSING if self.paper is None else ("≈" if self.paper.approx else "") + self.paper.formatted()

    def ours_text(self) -> str:
        if self.ours is None:
            return MISSING
        text = f"{self.ours.value:.{self.decimals}f}"
        if self.ours.std is not None:
            text += f" ± {self.ours.std:.{self.decimals}f}"
        fixed = self.fixed_value
        if fixed is not None:
            lam = (self.ours.model_extra or {}).get("fixed_lambda")
            at = f"λ={float(lam):.3g}" if isinstance(lam, (int, float)) else "fixed λ"
            text += f" ({at}: {fixed:.{self.decimals}f})"
        return text

    @property
    def fixed_value(self) -> Optional[float]:
        """The run's own value at its fixed λ, when ours was recomputed at another λ (cell field
        ``fixed_value``, beside ``fixed_lambda``; see ``harness.table6.study_lambda_cells``)."""
        if self.ours is None:
            return None
        value = (self.ours.model_extra or {}).get("fixed_value")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def delta_text(self) -> str:
        d = self.delta
        if d is None:
            return MISSING
        if round(d, self.decimals) == 0:
            return f"{0:.{self.decimals}f}"
        return f"{d:+.{self.decimals}f}".replace("-", "−")


@dataclass(frozen=True)
class RowView:
    id: str
    label: str
    variant: Optional[str]
    group: Optional[str]
    annotations: tuple[str, ...]
    cells: tuple[CellView, ...]


@dataclass
class Comparison:
    """A table ready to render: columns (paper order), rows, notes."""

    table: TableSpec
    columns: list[ColumnSpec]
    rows: list[RowView]
    notes: list[str] = field(default_factory=list)
    scales: tuple[str, ...] = ()


def scale_note(scales: Sequence[str]) -> Optional[str]:
    """The header note for results that are not (all) full scale; None when they are."""
    others = [s for s in scales if s != FULL_SCALE]
    if not others:
        return None
    return (
        f"Ours: {', '.join(others)} scale. Paper: the published full-scale numbers (official code). "
        "Δ = ours − paper compares different scales and is shown for tracking, not as a reproduction error."
    )


def build_comparison(
    registry: Registry,
    results: ResultsInput,
    table: str,
    *,
    include_derived: bool = False,
    decimals: Optional[int] = None,
) -> Comparison:
    """Pair each paper cell of ``table`` with ours.

    ``include_derived`` keeps the paper's printed-gain columns (ours derived from our cells);
    ``decimals`` fixes the precision of ours/Δ (default: the paper cell's printed precision, min 1).
    """
    spec = registry.table(table)
    cells = [c for c in coerce_results(results) if c.table == spec.id]
    if include_derived:
        cells += derive_gain_cells(cells, registry)
    columns = [c for c in spec.columns if include_derived or not c.derived]
    ours: dict[tuple[str, Optional[str]], dict[str, ResultCell]] = {}
    for c in cells:
        ours.setdefault((c.row, c.variant), {})[c.column] = c
    unknown_columns = sorted({c.column for c in cells} - set(spec.column_ids))

    def make_row(row_id: str, label: str, group: Optional[str], annotations: tuple[str, ...], variant: Optional[str]) -> RowView:
        mine = ours.get((row_id, variant), {})
        views = []
        for col in columns:
            entry = registry.entry(f"{spec.id}/{row_id}/{col.id}")
            prec = decimals if decimals is not None else max(entry.decimals if entry is not None else 1, 1)
            views.append(CellView(entry, mine.get(col.id), prec))
        return RowView(row_id, label if variant is None else f"{label} [{variant}]", variant, group, annotations, tuple(views))

    rows: list[RowView] = []
    layout_ids = set(spec.row_ids)
    for r in spec.rows:
        ann = tuple(r.annotations.get(a, "") for a in spec.annotation_columns)
        rows.append(make_row(r.id, r.label, r.group, ann, None))
        for variant in sorted(v for (rid, v) in ours if rid == r.id and v is not None):
            rows.append(make_row(r.id, r.label, r.group, ann, variant))
    extra = sorted({(rid, v) for (rid, v) in ours if rid not in layout_ids}, key=lambda k: (k[0], k[1] or ""))
    for rid, variant in extra:
        rows.append(make_row(rid, rid, None, tuple("" for _ in spec.annotation_columns), variant))

    scales = tuple(sorted({c.scale or "unspecified" for c in cells}))
    notes = []
    note = scale_note(scales)
    if note:
        notes.append(note)
    if extra:
        notes.append("Rows " + ", ".join(r if v is None else f"{r} [{v}]" for r, v in extra) + " are ours only (not in the paper).")
    if unknown_columns:
        notes.append(f"Columns {unknown_columns} of ours are not in the paper's layout and are not shown.")
    return Comparison(spec, columns, rows, notes, scales)


# ------------------------------------------------------------------------------------------ Markdown
def _md(text: str) -> str:
    for ch in ("\\", "|", "*", "_", "`"):
        text = text.replace(ch, "\\" + ch)
    return text


def comparison_to_markdown(cmp: Comparison, heading_level: int = 3, title: Optional[str] = None) -> str:
    spec = cmp.table
    lines = [f"{'#' * heading_level} {title or spec.title}", ""]
    if spec.caption:
        lines += [f"*{_md(spec.caption)}*", ""]
    lines += [f"> {n}" for n in cmp.notes]
    if cmp.notes:
        lines.append("")
    header = ["Row"] + [_md(a) for a in spec.annotation_columns]
    for col in cmp.columns:
        header += [f"{_md(col.label)} paper", f"{_md(col.label)} ours", "Δ"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([":---"] * (1 + len(spec.annotation_columns)) + ["---:"] * (3 * len(cmp.columns))) + "|")
    group = None
    for row in cmp.rows:
        if row.group and row.group != group:
            group = row.group
            lines.append("| " + " | ".join([f"**{_md(group)}**"] + [""] * (len(header) - 1)) + " |")
        cells = [_md(row.label)] + [_md(a) for a in row.annotations]
        for c in row.cells:
            cells += [c.paper_text(), c.ours_text(), c.delta_text()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(registry: Registry, results: ResultsInput, table: str, *, include_derived: bool = False, heading_level: int = 3) -> str:
    """One table as Markdown (title, caption, notes, paper | ours | Δ per column)."""
    return comparison_to_markdown(build_comparison(registry, results, table, include_derived=include_derived), heading_level)


# -------------------------------------------------------------------------------------------- LaTeX
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "✓": r"\checkmark{}",
    "✗": r"$\times$",
    "Δ": r"$\Delta$",
    "·": r"$\cdot$",
    "φ": r"$\phi$",
    "↑": r"$\uparrow$",
    "–": "--",
    "−": "$-$",
    "≈": r"$\approx$",
    "λ": r"$\lambda$",
    "*": r"$^*$",
    "×": r"$\times$",
    "²": r"$^2$",
    "|": r"$|$",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and map the symbols the tables use (±, ✓, ✗, Δ, ...)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def comparison_to_latex(cmp: Comparison, label: Optional[str] = None) -> str:
    """A ``table`` float with a booktabs ``tabular``; needs ``booktabs`` (and ``amssymb`` for ✓)."""
    spec = cmp.table
    n_text = 1 + len(spec.annotation_columns)
    colspec = "l" * n_text + "".join("rrr" for _ in cmp.columns)
    caption = latex_escape(spec.title + (". " + spec.caption if spec.caption else ""))
    for n in cmp.notes:
        caption += r" \emph{" + latex_escape(n) + "}"
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{colspec}}}", r"\toprule"]
    top = [""] * n_text + [rf"\multicolumn{{3}}{{c}}{{{latex_escape(c.label)}}}" for c in cmp.columns]
    lines.append(" & ".join(top) + r" \\")
    rules = [rf"\cmidrule(lr){{{n_text + 1 + 3 * i}-{n_text + 3 + 3 * i}}}" for i in range(len(cmp.columns))]
    lines.append(" ".join(rules))
    sub = ["Row"] + [latex_escape(a) for a in spec.annotation_columns] + ["Paper", "Ours", r"$\Delta$"] * len(cmp.columns)
    lines += [" & ".join(sub) + r" \\", r"\midrule"]
    group = None
    width = n_text + 3 * len(cmp.columns)
    for row in cmp.rows:
        if row.group and row.group != group:
            group = row.group
            lines.append(rf"\multicolumn{{{width}}}{{l}}{{\emph{{{latex_escape(group)}}}}} \\")
        cells = [latex_escape(row.label)] + [latex_escape(a) for a in row.annotations]
        for c in row.cells:
            cells += [latex_escape(c.paper_text()), latex_escape(c.ours_text()), latex_escape(c.delta_text())]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_latex(registry: Registry, results: ResultsInput, table: str, *, include_derived: bool = False, label: Optional[str] = None) -> str:
    return comparison_to_latex(build_comparison(registry, results, table, include_derived=include_derived), label)


# --------------------------------------------------------------------------------------------- HTML
def comparison_to_html(cmp: Comparison) -> str:
    """A self-contained ``<table>`` (with a caption and notes); Δ cells carry class ``pos``/``neg``."""
    spec = cmp.table
    e = html.escape
    n_text = 1 + len(spec.annotation_columns)
    out = [f'<table class="bike-compare" data-table="{e(spec.id)}">', f"<caption>{e(spec.title)}"]
    if spec.caption:
        out.append(f'<br><span class="caption">{e(spec.caption)}</span>')
    for n in cmp.notes:
        out.append(f'<br><span class="note">{e(n)}</span>')
    out.append("</caption>")
    out.append("<thead>")
    top = [f'<th rowspan="2">Row</th>'] + [f'<th rowspan="2">{e(a)}</th>' for a in spec.annotation_columns]
    top += [f'<th colspan="3">{e(c.label)}</th>' for c in cmp.columns]
    out.append("<tr>" + "".join(top) + "</tr>")
    out.append("<tr>" + "<th>Paper</th><th>Ours</th><th>Δ</th>" * len(cmp.columns) + "</tr>")
    out.append("</thead>")
    out.append("<tbody>")
    group = None
    for row in cmp.rows:
        if row.group and row.group != group:
            group = row.group
            out.append(f'<tr class="group"><td colspan="{n_text + 3 * len(cmp.columns)}">{e(group)}</td></tr>')
        tds = [f"<td>{e(row.label)}</td>"] + [f"<td>{e(a)}</td>" for a in row.annotations]
        for c in row.cells:
            d = c.delta
            cls = "delta" + ("" if d is None or round(d, c.decimals) == 0 else (" pos" if d > 0 else " neg"))
            run = f' title="run {e(c.ours.run_id)}"' if c.ours is not None and c.ours.run_id else ""
            tds += [f'<td class="paper">{e(c.paper_text())}</td>', f'<td class="ours"{run}>{e(c.ours_text())}</td>', f'<td class="{cls}">{e(c.delta_text())}</td>']
        out.append("<tr>" + "".join(tds) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out) + "\n"


def render_html(registry: Registry, results: ResultsInput, table: str, *, include_derived: bool = False) -> str:
    return comparison_to_html(build_comparison(registry, results, table, include_derived=include_derived))


def render_table(registry: Registry, results: ResultsInput, table: str, fmt: Format = "markdown", *, include_derived: bool = False) -> str:
    """One table in ``fmt`` ("markdown", "latex" or "html")."""
    renderers = {"markdown": render_markdown, "latex": render_latex, "html": render_html}
    if fmt not in renderers:
        raise ValueError(f"fmt: expected one of {sorted(renderers)}, got {fmt!r}")
    return renderers[fmt](registry, results, table, include_derived=include_derived)


def render_table6_markdown(
    registry: Registry,
    results: ResultsInput,
    *,
    title: str = "Table 6: Ablation studies on Kinetics-400 — ours beside the paper",
    include_derived: bool = False,
    tables: Sequence[str] = TABLE6_IDS,
    notes: Sequence[str] = (),
) -> str:
    """All nine sub-tables of Table 6 in one Markdown document (``results/table6.md``).

    ``notes`` are document-level notes printed as block quotes under the title (e.g. where the λ of
    the fused cells comes from).
    """
    cells = coerce_results(results)
    scales = sorted({c.scale or "unspecified" for c in cells})
    lines = [f"# {title}", ""]
    note = scale_note(scales)
    if note:
        lines += [f"> **Scale.** {note}", ""]
    for extra in notes:
        lines += [f"> {extra}", ""]
    counted = [c for c in cells if c.table in tables]
    lines += [f"{len(counted)} cell(s) of ours; paper values from `{registry.path.name if registry.path else 'registry'}`. Missing: {MISSING}.", ""]
    for t in tables:
        cmp = build_comparison(registry, cells, t, include_derived=include_derived)
        cmp.notes = [n for n in cmp.notes if n != note]  # the scale note is given once, above
        lines.append(comparison_to_markdown(cmp, heading_level=2))
    return "\n".join(lines)
