"""harness.tables: ours beside the paper with the delta, in Markdown, LaTeX and HTML."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from harness.registry import load_registry
from harness.tables import (
    MISSING,
    TABLE6_IDS,
    build_comparison,
    latex_escape,
    render_html,
    render_latex,
    render_markdown,
    render_table,
    render_table6_markdown,
)

OURS = [
    {"table": "6a", "row": "mean_pool", "column": "top1", "value": 41.23, "scale": "smoke", "run_id": "abc123"},
    {"table": "6a", "row": "vcs", "column": "top1", "value": 43.0, "scale": "smoke"},
    {"table": "6a", "row": "vcs", "column": "top1", "value": 42.0, "scale": "smoke", "variant": "paper"},
    {"table": "6i", "row": "vit_b32", "column": "V*", "value": 80.5, "std": 0.25, "scale": "smoke"},
]


@pytest.fixture(scope="module")
def reg():
    return load_registry()


def _md_rows(md: str) -> list[list[str]]:
    """Body rows of the (first) Markdown table, cells stripped."""
    rows = [l for l in md.splitlines() if l.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows[2:]]


def test_markdown_pairs_each_paper_cell_with_ours_and_delta(reg):
    md = render_markdown(reg, OURS, "6a")
    header = next(l for l in md.splitlines() if l.startswith("| Row"))
    assert "Top-1(%) paper" in header and "Top-1(%) ours" in header and header.rstrip(" |").endswith("Δ")
    rows = {r[0]: r for r in _md_rows(md)}
    assert rows["Baseline: Mean Pool"][2:] == ["76.8", "41.2", "−35.6"]
    assert rows["+ Video Concept Spotting"][2:] == ["78.5", "43.0", "−35.5"]
    assert rows["+ Video Concept Spotting [paper]"][2:] == ["78.5", "42.0", "−36.5"]
    assert rows["+ Frozen label encoder"][2:] == ["78.9", MISSING, MISSING]
    # every paper column shows the registry's number, in the paper's row order
    assert [r[2] for r in _md_rows(md) if "[" not in r[0]] == [f"{e.value:.1f}" for e in reg.find(table="6a", column="top1")]


def test_smoke_scale_note_and_full_scale_without(reg):
    assert "smoke scale" in render_markdown(reg, OURS, "6a")
    full = [dict(c, scale="full") for c in OURS]
    md = render_markdown(reg, full, "6a")
    assert "scale" not in md.split("| Row")[0].lower().replace("full-scale", "")
    assert "Ours:" not in md


def test_derived_gain_columns_are_computed_from_ours(reg):
    md = render_markdown(reg, OURS, "6a", include_derived=True)
    rows = {r[0]: r for r in _md_rows(md)}
    # columns: label, g(.), top1 paper/ours/Δ, gain paper/ours/Δ
    assert rows["+ Video Concept Spotting"][5:] == ["1.7", "1.8", "+0.1"]
    assert rows["Baseline: Mean Pool"][5:] == [MISSING, MISSING, MISSING]
    assert "Δ vs baseline" not in render_markdown(reg, OURS, "6a")


def test_std_and_extra_rows(reg):
    cells = OURS + [{"table": "6i", "row": "vit_h14", "column": "V", "value": 88.0, "scale": "smoke"}]
    cmp = build_comparison(reg, cells, "6i")
    assert [r.id for r in cmp.rows] == ["vit_b32", "vit_b16", "vit_l14", "vit_h14"]
    b32 = cmp.rows[0].cells[[c.id for c in cmp.columns].index("V*")]
    assert (b32.paper_text(), b32.ours_text(), b32.delta_text()) == ("80.2", "80.5 ± 0.2", "+0.3")
    assert any("vit_h14" in n and "ours only" in n for n in cmp.notes)


def test_latex_is_escaped_booktabs(reg):
    tex = render_latex(reg, OURS, "6a", label="tab:6a")
    assert tex.startswith(r"\begin{table}") and r"\toprule" in tex and r"\bottomrule" in tex and r"\label{tab:6a}" in tex
    assert r"Top-1(\%)" in tex and r"$\Delta$" in tex
    assert "41.2 & $-$35.6" in tex
    body = tex.split(r"\midrule")[1]
    assert "%" not in body.replace(r"\%", "")
    assert len(re.findall(r"\\cmidrule", tex)) == 1
    assert latex_escape("a_b & 5% ± 1 ✓") == r"a\_b \& 5\% $\pm$ 1 \checkmark{}"
    wide = render_latex(reg, [], "1")
    assert r"\multicolumn{17}{l}{\emph{Methods with large-scale image pre-training}}" in wide
    assert "MVFNet\\_En" in wide and "128$\\times$224$^2$" in wide


class _Balance(HTMLParser):
    VOID = {"br"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.neg = 0

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)
        if ("class", "delta neg") in attrs:
            self.neg += 1

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


def test_html_is_balanced_and_marks_deltas(reg):
    page = render_html(reg, OURS, "6a")
    parser = _Balance()
    parser.feed(page)
    assert parser.stack == [] and parser.neg == 3
    assert 'title="run abc123"' in page and "<th>Δ</th>" in page
    assert "row &#x27;+ Video Concept Spotting&#x27;" in render_html(reg, [], "6b")  # quotes escaped
    assert "<script>" not in render_html(reg, [{"table": "6c", "row": "<script>", "column": "top1", "value": 1.0}], "6c")


def test_table6_document_has_all_nine_subtables_in_order(reg):
    doc = render_table6_markdown(reg, OURS)
    heads = re.findall(r"^## (Table 6[a-i])", doc, flags=re.M)
    assert heads == [f"Table {t}" for t in TABLE6_IDS]
    assert doc.count("smoke scale") == 1  # the scale note once, at the top
    assert doc.startswith("# Table 6")


def test_render_table_dispatch_and_errors(reg):
    assert render_table(reg, OURS, "6b", "html").startswith("<table")
    assert render_table(reg, OURS, "6b", "latex").startswith(r"\begin{table}")
    with pytest.raises(ValueError, match="fmt"):
        render_table(reg, OURS, "6b", "pdf")
    with pytest.raises(KeyError, match="near matches"):
        render_markdown(reg, OURS, "6j")


def test_recomputed_cell_shows_the_fixed_lambda_value_beside_it(reg):
    """A cell recomputed at a study's λ (harness.table6.study_lambda_cells) keeps the run's fixed-λ value
    visible in every rendering; Δ is taken against the value shown first (the study-λ one)."""
    cells = [{"table": "6e", "row": "trained", "column": "V+A", "value": 75.04, "scale": "full",
              "fixed_value": 73.96, "fixed_lambda": 0.6, "lambda": 0.298, "lambda_from": "st"},
             {"table": "6e", "row": "trained", "column": "V", "value": 70.0, "scale": "full"}]
    rows = {r[0]: r for r in _md_rows(render_markdown(reg, cells, "6e"))}
    paper = reg.entry("6e/trained/V+A").value
    trained = rows["trained"]  # Row, Training, then (paper, ours, Δ) for A, V, V+A
    assert trained[-3:] == [f"{paper:.1f}", "75.0 (λ=0.6: 74.0)", f"{75.04 - paper:+.1f}".replace("-", "−")]
    assert trained[6] == "70.0"  # V ours: not recomputed, shown as it is
    latex = render_latex(reg, cells, "6e")
    assert r"75.0 ($\lambda$=0.6: 74.0)" in latex and "λ" not in latex
    assert "75.0 (λ=0.6: 74.0)" in render_html(reg, cells, "6e")
    doc = render_table6_markdown(reg, cells, notes=["**V+A cells: λ = 0.298 from study `st`**"])
    assert "> **V+A cells: λ = 0.298 from study `st`**" in doc.split("## ")[0]
