"""Ablation directions of Table 6 (issue: the embedded world as a miniature of the paper)."""

from __future__ import annotations

import io
import itertools

import pytest

from harness.directions import ablation_directions
from harness.registry import load_registry


def _paper_cells(reg):
    return [e for e in reg if e.table.startswith("6") and e.delta_of is None and e.profile == "official" and not e.approx]


def _reference_count(reg) -> int:
    """From the definition: pairs of rows within a column and of columns within a row, paper values differ."""
    n = 0
    cells = _paper_cells(reg)
    for a, b in itertools.combinations(cells, 2):
        if a.table != b.table or a.value == b.value:
            continue
        if a.column == b.column or a.row == b.row:
            n += 1
    return n


def _ours(reg, change=None):
    """Our cells = the paper's values (every direction reproduced), with ``change`` applied."""
    cells = [{"table": e.table, "row": e.row, "column": e.column, "value": e.value} for e in _paper_cells(reg)]
    for c in cells:
        c["value"] = (change or {}).get((c["table"], c["row"], c["column"]), c["value"])
    return cells


def test_the_papers_own_values_reproduce_every_direction():
    reg = load_registry()
    report = ablation_directions(_ours(reg), reg)
    assert report.total == len(report.directions) == _reference_count(reg)
    assert report.reproduced == report.total and not report.misses
    assert report.headline() == f"Ablation directions: {report.total} of {report.total} reproduced (100 %)"


def test_a_reversed_pair_and_a_tie_are_misses_and_missing_cells_are_not_counted():
    reg = load_registry()
    full = ablation_directions(_ours(reg), reg).total
    # 6e: trained A (69.6) above untrained A (56.6) in the paper; ours reversed. 6c: a tie of ours.
    changed = _ours(reg, {("6e", "trained", "A"): 50.0, ("6c", "prompt_both", "top1"): 51.2})
    report = ablation_directions(changed, reg)
    missed = {(d.higher, d.lower) for d in report.misses}
    assert ("trained/A", "untrained/A") in missed and ("prompt_both/top1", "prompt_attributes/top1") in missed
    assert report.total == full and report.reproduced < full
    assert "6e: trained/A > untrained/A (paper 69.6 vs 56.6; ours 50.00 vs 56.60)" in report.to_markdown()
    # without 6i's ViT-L/14 row the directions that need it are unmeasured, not misses
    partial = [c for c in _ours(reg) if not (c["table"] == "6i" and c["row"] == "vit_l14")]
    rp = ablation_directions(partial, reg)
    assert rp.reproduced == rp.total < full and len(rp.directions) == len(ablation_directions(_ours(reg), reg).directions)
    assert rp.to_dict()["unmeasured"] == full - rp.total


def test_check_reports_the_directions(tmp_path):
    from harness.check import check_main as run_check

    reg = load_registry()
    cells = [{**c, "scale": "smoke"} for c in _ours(reg, {("6e", "trained", "A"): 50.0})]
    import json

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"scale": "smoke", "cells": cells}))
    out, err = io.StringIO(), io.StringIO()
    run_check(path, baseline_path=tmp_path / "b.json", bless=True, out=out, err=err)
    out = io.StringIO()
    assert run_check(path, baseline_path=tmp_path / "b.json", out=out, err=err) == 0
    total = ablation_directions(cells, reg).total
    assert f"Ablation directions: {total - 1} of {total} reproduced" in out.getvalue()
    assert "trained/A > untrained/A" in out.getvalue()
