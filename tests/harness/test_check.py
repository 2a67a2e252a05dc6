"""harness.check: regression against a blessed baseline and against the paper's numbers."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from harness.check import (
    CheckError,
    Tolerances,
    check_main,
    compare_with_baseline,
    compare_with_paper,
    derive_gain_cells,
    load_baseline,
    load_results,
    load_tolerances,
    write_baseline,
)
from harness.cli import add_check_arguments, run_from_args
from harness.registry import load_registry

SMOKE = [
    {"table": "6a", "row": "mean_pool", "column": "top1", "value": 41.25, "scale": "smoke", "run_id": "r1", "metric": "top1"},
    {"table": "6a", "row": "vcs", "column": "top1", "value": 44.5, "scale": "smoke", "run_id": "r2", "metric": "top1"},
    {"table": "6e", "row": "trained", "column": "A", "value": 30.0, "scale": "smoke", "run_id": "r3"},
    {"table": "6e", "row": "trained", "column": "V+A", "value": 47.75, "scale": "smoke", "run_id": "r3"},
]


@pytest.fixture(scope="module")
def reg():
    return load_registry()


def _full_scale_6a(reg, shift: dict[str, float] | None = None) -> list[dict]:
    """Our 'full-scale' 6a top-1 cells equal to the paper's, plus per-row shifts."""
    shift = shift or {}
    return [
        {"table": "6a", "row": e.row, "column": "top1", "value": e.value + shift.get(e.row, 0.0), "scale": "full"}
        for e in reg.find(table="6a", column="top1")
    ]


def _write_results(tmp_path: Path, cells, name: str = "results.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(cells), encoding="utf-8")
    return path


def _perturbed(cells, key_row: str, delta: float) -> list[dict]:
    return [dict(c, value=c["value"] + delta) if c["row"] == key_row and c["table"] == "6a" else dict(c) for c in cells]


def _run(**kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = check_main(out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------------------- baseline
def test_unchanged_results_pass_the_baseline(tmp_path):
    results = _write_results(tmp_path, SMOKE)
    baseline = write_baseline(load_results(results), tmp_path / "baselines" / "table6_smoke.json")
    stored = json.loads(baseline.read_text())
    assert stored["cells"]["6a/mean_pool/top1"] == {"value": 41.25, "metric": "top1", "run_id": "r1"}
    assert stored["meta"]["scale"] == "smoke"
    code, out, _ = _run(results_path=results, baseline_path=baseline)
    assert code == 0
    assert "PASS: 4 ok" in out


def test_perturbation_beyond_tolerance_fails(tmp_path):
    baseline = write_baseline(SMOKE, tmp_path / "base.json")
    results = _write_results(tmp_path, _perturbed(SMOKE, "vcs", -1.5))
    code, out, _ = _run(results_path=results, baseline_path=baseline)
    assert code == 1
    line = next(l for l in out.splitlines() if "6a/vcs/top1" in l)
    assert line.startswith("REGRESSION") and "-1.50" in line


def test_small_noise_is_tolerated(tmp_path):
    baseline = write_baseline(SMOKE, tmp_path / "base.json")
    noisy = [dict(c, value=c["value"] + (0.6 if i % 2 else -0.9)) for i, c in enumerate(SMOKE)]
    report = compare_with_baseline(noisy, baseline)
    assert report.counts()["ok"] == 4 and not report.failed()
    # exactly at the tolerance is still fine, just past it is not
    assert compare_with_baseline(_perturbed(SMOKE, "vcs", -1.0), baseline).counts()["ok"] == 4
    assert compare_with_baseline(_perturbed(SMOKE, "vcs", -1.01), baseline).counts()["regression"] == 1


def test_direction_rule(tmp_path):
    baseline = write_baseline(SMOKE, tmp_path / "base.json")
    better = _perturbed(SMOKE, "vcs", +2.0)
    report = compare_with_baseline(better, baseline)
    assert [r.status for r in report.rows if r.key == "6a/vcs/top1"] == ["improved"]
    assert not report.failed()
    assert compare_with_baseline(better, baseline, direction="both").failed()
    assert compare_with_baseline(better, baseline, direction="increase").failed()
    assert not compare_with_baseline(_perturbed(SMOKE, "vcs", -2.0), baseline, direction="increase").failed()


def test_missing_cells_count_unless_told_otherwise(tmp_path):
    baseline = write_baseline(SMOKE, tmp_path / "base.json")
    results = _write_results(tmp_path, SMOKE[1:])
    code, out, _ = _run(results_path=results, baseline_path=baseline)
    assert code == 1 and "MISSING" in out and "6a/mean_pool/top1" in out
    code, _, _ = _run(results_path=results, baseline_path=baseline, fail_on_missing=False)
    assert code == 0


def test_extra_cells_are_reported_but_do_not_fail(tmp_path):
    baseline = write_baseline(SMOKE[:2], tmp_path / "base.json")
    report = compare_with_baseline(SMOKE, baseline)
    assert report.counts()["no_reference"] == 2 and not report.failed()


def test_bless_writes_the_baseline(tmp_path):
    results = _write_results(tmp_path, SMOKE)
    target = tmp_path / "new" / "b.json"
    code, out, _ = _run(results_path=results, baseline_path=target, bless=True)
    assert code == 0 and "blessed 4 cell(s)" in out
    assert set(load_baseline(target)) == {"6a/mean_pool/top1", "6a/vcs/top1", "6e/trained/A", "6e/trained/V+A"}


def test_no_baseline_is_an_input_error(tmp_path):
    code, _, err = _run(results_path=_write_results(tmp_path, SMOKE), baseline_path=tmp_path / "none.json")
    assert code == 2 and "--bless" in err


def test_plain_mapping_baseline_and_variants(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("6a/vcs/top1: 44.0\n6a/vcs/top1#paper: 40.0\n", encoding="utf-8")
    cells = [SMOKE[1], dict(SMOKE[1], value=37.0, variant="paper")]
    report = compare_with_baseline(cells, path)
    assert {r.key: r.status for r in report.rows} == {"6a/vcs/top1": "ok", "6a/vcs/top1#paper": "regression"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"6a/vcs": 1.0}), encoding="utf-8")
    with pytest.raises(CheckError, match="expected 'table/row/column'"):
        load_baseline(bad)


# ------------------------------------------------------------------------------------------ paper
def test_paper_values_pass_and_a_drop_fails(reg):
    report = compare_with_paper(_full_scale_6a(reg), reg)
    assert report.counts()["regression"] == 0 and report.counts()["missing"] == 0
    # the printed gains of 6a are derived from our cells and compared too
    assert {r.key for r in report.rows if r.note == "derived gain"} == {"6a/vcs/gain", "6a/vcs_transf/gain", "6a/vcs_transf_frozen/gain"}
    assert report.compared == 7 and not report.failed()

    dropped = compare_with_paper(_full_scale_6a(reg, {"vcs": -0.6}), reg)
    statuses = {r.key: r.status for r in dropped.rows}
    assert statuses["6a/vcs/top1"] == "regression" and statuses["6a/vcs/gain"] == "regression"
    assert dropped.failed()
    assert not compare_with_paper(_full_scale_6a(reg, {"vcs": -0.4}), reg).failed()
    assert not compare_with_paper(_full_scale_6a(reg, {"vcs": -0.6}), reg, tolerance=1.0).failed()


def test_paper_missing_cells_in_scope(reg):
    cells = [c for c in _full_scale_6a(reg) if c["row"] != "vcs_transf"]
    report = compare_with_paper(cells, reg)
    assert [r.key for r in report.by_status("missing")] == ["6a/vcs_transf/top1"]
    assert report.failed() and not report.failed(fail_on_missing=False)
    # explicit scope: Table 6b is in scope and wholly missing
    scoped = compare_with_paper(_full_scale_6a(reg), reg, tables=["6a", "6b"])
    assert len(scoped.by_status("missing")) == 3


def test_other_methods_rows_are_not_missing(reg):
    cells = [{"table": "6h", "row": "bike", "column": "top1", "value": 81.4, "scale": "full"}]
    report = compare_with_paper(cells, reg)
    assert report.counts()["missing"] == 0 and report.compared == 1


def test_smoke_results_are_not_compared_with_the_paper(tmp_path, reg):
    results = _write_results(tmp_path, SMOKE)
    code, out, err = _run(results_path=results, against="paper", registry=reg)
    assert code == 2 and "nothing to compare" in err and "4 cell(s) of scale smoke left out" in out
    report = compare_with_paper(SMOKE, reg, scale=None)
    assert report.compared > 0 and report.failed()  # smoke numbers are far below the paper's


def test_cost_metrics_regress_upwards(reg):
    row = {"table": "1", "row": "bike_vitl14_16x224", "column": "gflops", "scale": "full"}
    assert compare_with_paper([dict(row, value=900.0)], reg, tables=["1"]).by_status("regression")
    assert compare_with_paper([dict(row, value=700.0)], reg, tables=["1"]).by_status("improved")


def test_against_both(tmp_path, reg):
    cells = _full_scale_6a(reg)
    results = _write_results(tmp_path, cells)
    baseline = write_baseline(cells, tmp_path / "b.json")
    code, out, _ = _run(results_path=results, baseline_path=baseline, against="both", registry=reg)
    assert code == 0 and "Check against the baseline" in out and "Check against the paper" in out
    worse = _write_results(tmp_path, _full_scale_6a(reg, {"mean_pool": -0.8}), "worse.json")
    code, _, _ = _run(results_path=worse, baseline_path=baseline, against="both", registry=reg)
    assert code == 1  # within the baseline's 1.0, beyond the paper's 0.5


# ------------------------------------------------------------------------------------- tolerances
def test_tolerance_precedence_cell_table_metric_default():
    tol = Tolerances(default=0.5, metrics={"top1": 0.7}, tables={"6i": 1.5}, cells={"6i/vit_l14/V": 3.0})
    assert tol.for_cell("6a/vcs/top1", "6a", "top1") == (0.7, "decrease")
    assert tol.for_cell("6a/vcs/top5", "6a", "top5") == (0.5, "decrease")
    assert tol.for_cell("6i/vit_b32/V", "6i", "top1") == (1.5, "decrease")
    assert tol.for_cell("6i/vit_l14/V#paper", "6i", "top1") == (3.0, "decrease")
    assert tol.for_cell("1/x/gflops", "1", "gflops_per_view")[1] == "increase"
    both = Tolerances(directions={"top1": "both"})
    assert both.for_cell("6a/vcs/top1", "6a", "top1")[1] == "both"


def test_tolerance_file(tmp_path, reg):
    path = tmp_path / "tol.yaml"
    path.write_text("paper:\n  tables: {'6a': 1.0}\nbaseline:\n  default: 0.25\n", encoding="utf-8")
    tols = load_tolerances(path)
    assert tols["paper"].for_cell("6a/vcs/top1", "6a", "top1")[0] == 1.0
    assert tols["baseline"].default == 0.25
    results = _write_results(tmp_path, _full_scale_6a(reg, {"vcs": -0.8}))
    code, _, _ = _run(results_path=results, against="paper", tolerances_file=path, registry=reg)
    assert code == 0
    path.write_text("paper:\n  defualt: 1.0\n", encoding="utf-8")
    with pytest.raises(CheckError, match=r"paper: field 'defualt': unknown field"):
        load_tolerances(path)


# ---------------------------------------------------------------------------------------- results
def test_results_file_forms_and_errors(tmp_path):
    obj = tmp_path / "r.json"
    obj.write_text(json.dumps({"scale": "smoke", "cells": [{"table": "6a", "row": "vcs", "column": "top1", "value": 40}]}), encoding="utf-8")
    (cell,) = load_results(obj)
    assert cell.scale == "smoke" and cell.key == "6a/vcs/top1" and cell.value == 40.0

    bad = _write_results(tmp_path, [SMOKE[0], {"table": "6a", "row": "vcs", "column": "top1", "value": "high"}], "bad.json")
    with pytest.raises(CheckError) as info:
        load_results(bad)
    assert str(bad) in str(info.value) and "cells[1]" in str(info.value) and "'value'" in str(info.value)

    dup = _write_results(tmp_path, [SMOKE[0], SMOKE[0]], "dup.json")
    with pytest.raises(CheckError, match="duplicate cell '6a/mean_pool/top1'"):
        load_results(dup)
    with pytest.raises(CheckError, match="file not found"):
        load_results(tmp_path / "absent.json")
    code, _, err = _run(results_path=tmp_path / "absent.json")
    assert code == 2 and "file not found" in err
    # a results directory stands for the table6_results.json it holds
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    with pytest.raises(CheckError, match="a directory without table6_results.json"):
        load_results(results_dir)
    (results_dir / "table6_results.json").write_text(obj.read_text(), encoding="utf-8")
    assert [c.key for c in load_results(results_dir)] == ["6a/vcs/top1"]


def test_derived_gains_need_both_operands(reg):
    cells = load_results([SMOKE[0], SMOKE[1]])
    (gain,) = derive_gain_cells(cells, reg)
    assert gain.key == "6a/vcs/gain" and gain.value == pytest.approx(44.5 - 41.25) and gain.derived


def test_cli_helpers_parse_and_run(tmp_path):
    results = _write_results(tmp_path, SMOKE)
    baseline = tmp_path / "b.json"
    parser = add_check_arguments(argparse.ArgumentParser())
    assert run_from_args(parser.parse_args(["--results", str(results), "--baseline", str(baseline), "--bless"])) == 0
    args = parser.parse_args(["--results", str(results), "--baseline", str(baseline), "--baseline-tolerance", "0.1"])
    assert run_from_args(args) == 0
    worse = _write_results(tmp_path, _perturbed(SMOKE, "vcs", -0.2), "w.json")
    args = parser.parse_args(["--results", str(worse), "--baseline", str(baseline), "--baseline-tolerance", "0.1"])
    assert run_from_args(args) == 1


# ------------------------------------------------------------------------- world identity, measured tolerance
WORLD = {"size": "default", "seed": 0, "config_hash": "abc123", "checkpoint_sha256": "f" * 64}


def _document(tmp_path: Path, cells, world, name: str) -> Path:
    return _write_results(tmp_path, {"scale": "smoke", **({"world": world} if world else {}), "cells": cells}, name)


def test_results_of_another_world_are_refused_not_compared(tmp_path):
    blessed = _document(tmp_path, SMOKE, WORLD, "blessed.json")
    baseline = tmp_path / "base.json"
    assert _run(results_path=blessed, baseline_path=baseline, bless=True)[0] == 0
    assert json.loads(baseline.read_text())["meta"]["world"] == WORLD
    assert _run(results_path=blessed, baseline_path=baseline)[0] == 0

    other_cpu = _document(tmp_path, _perturbed(SMOKE, "vcs", -6.5), dict(WORLD, checkpoint_sha256="e" * 64), "cpu.json")
    code, out, err = _run(results_path=other_cpu, baseline_path=baseline)
    assert code == 2 and "REGRESSION" not in out
    assert "checkpoint_sha256" in err and "CPU numerics" in err and "ffff" in err

    other_seed = _document(tmp_path, SMOKE, dict(WORLD, seed=1, checkpoint_sha256="e" * 64), "seed.json")
    code, _, err = _run(results_path=other_seed, baseline_path=baseline)
    assert code == 2 and "seed 1 (baseline: 0)" in err and "another world" in err

    anonymous = _document(tmp_path, SMOKE, None, "anon.json")
    code, _, err = _run(results_path=anonymous, baseline_path=baseline)
    assert code == 2 and "do not say which world" in err


def test_bless_with_spread_measures_each_cells_tolerance(tmp_path):
    import statistics

    seeds = {0: SMOKE, 1: _perturbed(SMOKE, "vcs", 1.0), 2: _perturbed(SMOKE, "vcs", -2.5)}
    files = {s: _document(tmp_path, cells, WORLD, f"seed{s}.json") for s, cells in seeds.items()}
    baseline = tmp_path / "base.json"
    code, _, _ = _run(results_path=files[0], baseline_path=baseline, bless=True, spread=[files[1], files[2]])
    assert code == 0
    stored = json.loads(baseline.read_text())
    vcs = stored["cells"]["6a/vcs/top1"]
    values = [44.5, 45.5, 42.0]
    assert vcs["seeds"] == 3 and vcs["seed_std"] == pytest.approx(statistics.stdev(values), abs=1e-4)
    assert vcs["tol"] == pytest.approx(2 * statistics.stdev(values), abs=1e-3)
    assert stored["cells"]["6a/mean_pool/top1"]["tol"] == 0.0  # the same at every seed: any drop is a regression
    # the measured tolerance is the cell's: within it passes, past it fails; other cells keep theirs
    tol = vcs["tol"]
    assert compare_with_baseline(_perturbed(SMOKE, "vcs", -(tol - 0.01)), baseline).counts()["ok"] == 4
    assert compare_with_baseline(_perturbed(SMOKE, "vcs", -(tol + 0.01)), baseline).counts()["regression"] == 1
    assert compare_with_baseline(_perturbed(SMOKE, "mean_pool", -0.01), baseline).counts()["regression"] == 1
    # an explicit tolerance still overrides the measured ones
    assert compare_with_baseline(_perturbed(SMOKE, "mean_pool", -0.01), baseline, tolerance=1.0).counts()["ok"] == 4
    # spread results of another world cannot set tolerances
    alien = _document(tmp_path, SMOKE, dict(WORLD, seed=2), "alien.json")
    code, _, err = _run(results_path=files[0], baseline_path=tmp_path / "b2.json", bless=True, spread=[alien])
    assert code == 2 and "--spread" in err


def test_baseline_cell_tolerance_must_be_a_non_negative_number(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "bikebench.baseline/1", "cells": {"6a/vcs/top1": {"value": 1.0, "tol": -1}}}))
    with pytest.raises(CheckError, match=r"field 'tol': expected a number >= 0, got -1"):
        load_baseline(bad)


def test_half_class_cells_check_the_printed_std_as_well_as_the_mean(reg):
    """Table 5 prints mean ± std over the 10 half-class splits: both are checked."""
    entry = next(e for e in reg if e.key == "5/bike_vitl14/ucf101_half")
    assert entry.std == 3.4
    cell = {"table": "5", "row": "bike_vitl14", "column": "ucf101_half", "value": entry.value, "scale": "full"}
    rows = {r.key: r for r in compare_with_paper([{**cell, "std": 3.6}], reg, tables=["5"]).rows}
    assert rows["5/bike_vitl14/ucf101_half"].status == "ok"
    std = rows["5/bike_vitl14/ucf101_half:std"]
    assert (std.ours, std.reference, std.status) == (3.6, 3.4, "ok") and std.delta == pytest.approx(0.2)
    # a spread far from the printed one fails even when the mean matches, in either direction
    for far in (1.0, 6.0):
        rows = {r.key: r for r in compare_with_paper([{**cell, "std": far}], reg, tables=["5"]).rows}
        assert rows["5/bike_vitl14/ucf101_half:std"].status == "regression"
    # a half-class cell without its std is missing its spread
    rows = {r.key: r for r in compare_with_paper([cell], reg, tables=["5"]).rows}
    assert rows["5/bike_vitl14/ucf101_half:std"].status == "missing"
