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


def test_gap_bands_split_the_directions_by_the_papers_margin():
    from harness.directions import gap_band

    assert [gap_band(g) for g in (0.1, 0.5, 0.6, 2.0, 2.1, 25.0)] == ["<= 0.5", "<= 0.5", "0.5-2", "0.5-2", "> 2", "> 2"]
    assert gap_band(1.0, bands=(1.0,)) == "<= 1" and gap_band(1.5, bands=(1.0,)) == "> 1"
    reg = load_registry()
    # 6a in the paper: VCS + Transf 78.7 over VCS 78.5 (0.2); ours reversed, so the "<= 0.5" band loses one
    report = ablation_directions(_ours(reg, {("6a", "vcs_transf", "top1"): 78.4}), reg)
    bands = {b: (n, m) for b, n, m in report.by_gap()}
    # reference: count the pairs by their published gap, from the registry's values
    ref: dict[str, int] = {}
    for d in report.measurable:
        g = d.paper_higher - d.paper_lower
        band = "<= 0.5" if g <= 0.5 + 1e-9 else "0.5-2" if g <= 2 + 1e-9 else "> 2"
        ref[band] = ref.get(band, 0) + 1
    assert {b: m for b, (n, m) in bands.items()} == ref
    assert sum(m - n for n, m in bands.values()) == len(report.misses) >= 1
    assert bands["<= 0.5"][0] < bands["<= 0.5"][1]
    assert "By the paper's gap between the two cells (points): <= 0.5:" in report.to_markdown()
    assert report.to_dict()["by_paper_gap"][0]["band"] == "<= 0.5"
    metrics = report.metrics()
    n, m = bands["<= 0.5"]
    assert metrics["ablation_directions_gap_le0.5_share"] == pytest.approx(100.0 * n / m) and n < m
    assert metrics["ablation_directions_gap_gt2_share"] == 100.0
    assert metrics["ablation_directions_reproduced"] == report.reproduced and metrics["ablation_directions_total"] == report.total


def _write_results(path, cells, seed, config_hash="4cc4a16e76", train_seeds=None):
    import json

    path.mkdir(parents=True)
    world = {"seed": seed, "config_hash": config_hash, "checkpoint_sha256": f"{seed:064d}", "size": "default"}
    document = {"scale": "smoke", "world": world, "cells": [{**c, "scale": "smoke"} for c in cells]}
    if train_seeds is not None:
        document["train_seeds"] = train_seeds
    (path / "table6_results.json").write_text(json.dumps(document))
    return path


def test_directions_across_worlds_tell_steady_from_split_directions(tmp_path):
    from harness.directions import directions_across

    reg = load_registry()
    full = ablation_directions(_ours(reg), reg).total
    reversed_6e = {("6e", "trained", "A"): 50.0}  # below untrained A (56.6): one or more 6e pairs miss
    d0 = _write_results(tmp_path / "r0", _ours(reg), 0)
    d1 = _write_results(tmp_path / "r1", _ours(reg, reversed_6e), 1)
    d2 = _write_results(tmp_path / "r2", _ours(reg, {**reversed_6e, ("6c", "prompt_both", "top1"): 51.2}), 2)
    report = directions_across([d0, d1, d2], reg)
    assert [w.label for w in report.worlds] == ["seed 0", "seed 1", "seed 2"]
    per_world = [w.report.reproduced for w in report.worlds]
    miss_6e = full - per_world[1]
    assert per_world[0] == full and miss_6e >= 1 and per_world[2] == full - miss_6e - 1
    assert report.total == 3 * full and report.reproduced == sum(per_world)
    # the 6e pairs miss on two worlds, the 6c tie on one: "some"; everything else holds on all three
    assert report.steadiness() == {"every": full - miss_6e - 1, "some": miss_6e + 1, "none": 0}
    text = report.to_markdown()
    assert text.startswith(f"# Ablation directions on 3 worlds: {sum(per_world)} of {3 * full} reproduced")
    assert "| 6c: prompt_both/top1 > prompt_attributes/top1 | 56.6 vs 51.2 | 56.60 vs 51.20 yes | 56.60 vs 51.20 yes | 51.20 vs 51.20 tie |" in text
    rows = [line for line in text.splitlines() if line.startswith("| 6")]
    assert len(rows) == miss_6e + 1 and rows[0].startswith("| 6e: trained/A > untrained/A")  # fewest worlds first
    data = report.to_dict()
    assert data["reproduced"] == sum(per_world) and [w["label"] for w in data["worlds"]] == ["seed 0", "seed 1", "seed 2"]
    assert sum(b["directions"] for b in data["by_paper_gap"]) == full


def test_directions_across_tells_worlds_of_one_seed_apart(tmp_path):
    from harness.directions import directions_across

    reg = load_registry()
    a = _write_results(tmp_path / "a", _ours(reg), 1)
    b = _write_results(tmp_path / "b", _ours(reg), 1, config_hash="0123456789")
    c = _write_results(tmp_path / "c", _ours(reg), 1, config_hash="0123456789")
    labels = [w.label for w in directions_across([a, b, c], reg).worlds]
    assert labels[0] == "seed 1 (4cc4a16e76)" and labels[1] == f"seed 1 (0123456789) ({b})" and labels[2].endswith(f"({c})")


def test_directions_across_labels_one_worlds_training_seeds(tmp_path):
    """One world's tables of several training seeds (``seed=S``): each labelled by its seed, the default unlabelled,
    so the side-by-side report shows which directions the training seed alone flips."""
    from harness.directions import directions_across

    reg = load_registry()
    a = _write_results(tmp_path / "a", _ours(reg), 0, train_seeds=[0])
    b = _write_results(tmp_path / "b", _ours(reg, {("6e", "trained", "A"): 50.0}), 0, train_seeds=[3])
    c = _write_results(tmp_path / "c", _ours(reg), 0, train_seeds=[1, 2])
    d = _write_results(tmp_path / "d", _ours(reg), 2, train_seeds=[True])  # not a seed list: ignored
    report = directions_across([a, b, c, d], reg)
    assert [w.label for w in report.worlds] == ["seed 0", "seed 0, training seed 3", "seed 0, training seeds 1, 2", "seed 2"]
    assert report.steadiness()["some"] >= 1  # the reversed 6e of training seed 3
    assert "| seed 0, training seed 3 |" in report.to_markdown()
    assert report.headline().startswith("Ablation directions on 4 tables of 2 worlds: ")


def test_cli_directions_prints_and_writes_the_report(tmp_path, capsys):
    import json

    from harness.cli import main

    reg = load_registry()
    d0 = _write_results(tmp_path / "r0", _ours(reg), 0)
    d1 = _write_results(tmp_path / "r1", _ours(reg, {("6e", "trained", "A"): 50.0}), 1)
    out = tmp_path / "rep" / "worlds.md"
    assert main(["directions", str(d0), str(d1 / "table6_results.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Ablation directions on 2 worlds:") and out.read_text() == printed
    assert json.loads(out.with_suffix(".json").read_text())["worlds"][1]["label"] == "seed 1"
    assert main(["directions", str(d0), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steadiness"]["none"] == 0
    assert main(["directions", str(d0), str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "table6_results.json" in err
