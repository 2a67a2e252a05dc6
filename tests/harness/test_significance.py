"""Paired tests of Table 6's directions on the validation videos (harness.significance)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from bike.config import RunConfig
from harness.directions import ablation_directions, directions_across
from harness.significance import ALPHA, PairedTest, SignificanceError, mcnemar_p, resolve_directions

CLASSES = [f"class{c}" for c in range(5)]
LAM = 0.7


@pytest.mark.parametrize("b,c", [(0, 0), (5, 5), (0, 6), (6, 0), (3, 17), (17, 3), (40, 60), (11, 223), (1, 2)])
def test_mcnemar_p_is_the_exact_two_sided_binomial_test_of_the_discordant_videos(b, c):
    # reference: McNemar's exact test = a two-sided binomial test of b successes in b + c trials at 1/2
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_mcnemar_p_refuses_negative_counts():
    with pytest.raises(ValueError, match="counts must be >= 0"):
        mcnemar_p(-1, 3)


def test_verdicts_need_a_resolved_order():
    assert PairedTest(100, 20, 3, mcnemar_p(20, 3)).verdict == "paper"
    assert PairedTest(100, 3, 20, mcnemar_p(3, 20)).verdict == "against"
    assert PairedTest(100, 12, 8, mcnemar_p(12, 8)).verdict == "noise"  # ordered the paper's way, not resolved
    assert PairedTest(100, 0, 0, 1.0).verdict == "noise"  # a tie
    assert "3 vs 20 videos, p < 0.001: resolved against the paper" == PairedTest(100, 3, 20, mcnemar_p(3, 20)).describe()


# ------------------------------------------------------------------ from the runs' caches
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _scores(labels: np.ndarray, right: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scores whose top-1 is the label exactly where ``right``, else the next class; a little noise."""
    n, k = len(labels), len(CLASSES)
    s = rng.uniform(0.0, 0.2, size=(n, k))
    top = np.where(right, labels, (labels + 1) % k)
    s[np.arange(n), top] += rng.uniform(0.3, 1.0, size=n)
    return s.astype(np.float32)


def _write_run(results: Path, run_id: str, video_ids: list[str], labels: np.ndarray, s_v: np.ndarray,
               s_a: np.ndarray) -> dict:
    """A run directory (config.yaml + the engine's cache writer); the per-video top-1 hits by hand."""
    from bike.engine.caches import split_cache_dir, write_cache

    config = RunConfig(stage="eval", model={"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32},
                       eval={"split": "val"}, fusion={"lam": LAM, "transform": "softmax"})
    run_dir = results / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    write_cache(split_cache_dir(run_dir, "val"), video_ids=video_ids, labels=labels, video_scores=s_v,
                classes=CLASSES, split="val", config_hash=config.content_hash(), attr_scores=s_a)
    fused = LAM * _softmax(s_v.astype(np.float64)) + (1 - LAM) * _softmax(s_a.astype(np.float64))  # Eq. 4, released
    hits = {"video_top1": s_v.argmax(1) == labels, "attr_top1": s_a.argmax(1) == labels,
            "fused_top1": fused.argmax(1) == labels}
    return {vid: {m: bool(h[i]) for m, h in hits.items()} for i, vid in enumerate(video_ids)}


def _table6e(tmp_path: Path, shuffle_trained: bool = False, seed: int = 0) -> tuple[Path, list[dict], dict]:
    """Two cached runs filling Table 6e (untrained and trained rows, columns A / V / V+A)."""
    rng = np.random.default_rng(seed)
    n = 90
    ids = [f"v{i:03d}" for i in range(n)]
    labels = np.arange(n) % len(CLASSES)
    results = tmp_path / "results"
    hits = {}
    for row, run_id, p_v, p_a in (("untrained", "run00000000u", 0.8, 0.45), ("trained", "run00000000t", 0.8, 0.7)):
        order = rng.permutation(n) if (shuffle_trained and row == "trained") else np.arange(n)
        s_v = _scores(labels, rng.random(n) < p_v, rng)
        s_a = _scores(labels, rng.random(n) < p_a, rng)
        hits[row] = _write_run(results, run_id, [ids[i] for i in order], labels[order], s_v[order], s_a[order])
    cells = []
    for row, run_id in (("untrained", "run00000000u"), ("trained", "run00000000t")):
        for column, metric in (("A", "attr_top1"), ("V", "video_top1"), ("V+A", "fused_top1")):
            value = 100.0 * np.mean([hits[row][v][metric] for v in ids])
            cells.append({"table": "6e", "row": row, "column": column, "value": float(value), "run_id": run_id,
                          "metric": metric})
    return results, cells, {"ids": ids, "hits": hits}


def _reference(ref: dict, higher: str, lower: str) -> tuple[int, int]:
    metric = {"A": "attr_top1", "V": "video_top1", "V+A": "fused_top1"}
    (hr, hc), (lr, lc) = higher.split("/"), lower.split("/")
    a = [ref["hits"][hr][v][metric[hc]] for v in ref["ids"]]
    b = [ref["hits"][lr][v][metric[lc]] for v in ref["ids"]]
    return sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b))


@pytest.mark.parametrize("shuffle", [False, True])
def test_each_direction_is_tested_on_the_videos_its_two_cells_get_right(tmp_path, shuffle):
    results, cells, ref = _table6e(tmp_path, shuffle_trained=shuffle)  # shuffled rows: joined by video id
    report = resolve_directions(ablation_directions(cells), cells, results)
    assert report.total == 8 and len(report.tests) == 8 and report.untested is None
    verdicts = set()
    for d in report.measurable:
        test = report.tests[d.key]
        b, c = _reference(ref, d.higher, d.lower)
        assert (test.higher_only, test.lower_only, test.n_videos) == (b, c, 90), d.name()
        # the counts are the difference of the two cells: (b - c) videos of 90
        assert d.ours_higher - d.ours_lower == pytest.approx(100.0 * (b - c) / 90)
        p = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
        assert test.p_value == pytest.approx(p)
        verdicts.add(test.verdict)
        assert test.verdict == ("noise" if p >= ALPHA or b == c else "paper" if b > c else "against")
    assert "paper" in verdicts and "noise" in verdicts
    r = report.resolution()
    assert sum(r.values()) == report.total and r["untested"] == 0
    text = report.to_markdown()
    assert f"On the 90 validation videos (McNemar's exact test, α = 0.05): {r['paper']} direction(s)" in text
    metrics = report.metrics()
    assert metrics["ablation_directions_resolved_paper"] == r["paper"]
    assert metrics["ablation_directions_within_noise"] == r["noise"]
    data = report.to_dict()
    assert len(data["tests"]) == 8 and data["resolution"] == r
    assert all("test" in m for m in data["misses"])


def test_a_cache_that_contradicts_its_cell_is_an_error_naming_it(tmp_path):
    results, cells, _ = _table6e(tmp_path)
    cells[0] = {**cells[0], "value": cells[0]["value"] + 1.0}
    with pytest.raises(SignificanceError, match=r"runs/run00000000u/cache/val.*cell 6e/untrained/A .* recomputes to"):
        resolve_directions(ablation_directions(cells), cells, results)


def test_cells_without_run_caches_are_left_untested_with_the_reason(tmp_path):
    results, cells, _ = _table6e(tmp_path)
    import shutil

    shutil.rmtree(results / "runs" / "run00000000t")
    report = resolve_directions(ablation_directions(cells), cells, results)
    assert len(report.tests) == 3  # the untrained row's three pairs
    assert "run00000000t/config.yaml: no such run configuration" in report.untested
    assert report.resolution()["untested"] == 5
    assert "5 untested (" in report.resolution_line()
    bare = resolve_directions(ablation_directions(cells), cells, tmp_path / "elsewhere" / "table6_results.json")
    assert not bare.tests and bare.untested.endswith("elsewhere/runs: no run directories (their cached scores give the tests)")
    assert "Not tested on the validation videos: " in bare.to_markdown()


def test_directions_across_worlds_reports_the_tests(tmp_path, capsys):
    from harness.cli import main

    results, cells, ref = _table6e(tmp_path)
    (results / "table6_results.json").write_text(json.dumps({"scale": "smoke", "world": {"seed": 0}, "cells": cells}))
    report = directions_across([results])
    tests = report.worlds[0].report.tests
    assert len(tests) == 8
    text = report.to_markdown()
    r = report.worlds[0].report.resolution()
    assert f"| seed 0 | `{results}` | " in text and f"| {r['paper']} / {r['against']} / {r['noise']} |" in text
    against = [d for d in report.worlds[0].report.measurable if tests[d.key].verdict == "against"]
    assert [d.name() for d, _ in report.resolved_against()] == [d.name() for d in against]
    data = report.to_dict()
    assert all(o[0]["test"]["higher_only"] == _reference(ref, d["higher"], d["lower"])[0]
               for d in data["directions"] for o in [d["ours"]])
    # a contradicting cache: the directions are still counted, the world's tests are not, the cache is named
    cells[1] = {**cells[1], "value": 1.0}
    (results / "table6_results.json").write_text(json.dumps({"scale": "smoke", "world": {"seed": 0}, "cells": cells}))
    capsys.readouterr()
    assert main(["directions", str(results)]) == 0
    row = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| seed 0 |"))
    assert "| untested (" in row and "run00000000u/cache/val" in row and "recomputes to" in row


def test_check_tests_the_directions_of_a_results_directory(tmp_path):
    from harness.check import check_main as run_check

    results, cells, _ = _table6e(tmp_path)
    path = results / "table6_results.json"
    path.write_text(json.dumps({"scale": "smoke", "cells": [{**c, "scale": "smoke"} for c in cells]}))
    err = io.StringIO()
    assert run_check(path, baseline_path=tmp_path / "b.json", bless=True, out=io.StringIO(), err=err) == 0
    out = io.StringIO()
    assert run_check(path, baseline_path=tmp_path / "b.json", out=out, err=err) == 0
    report = resolve_directions(ablation_directions(cells), cells, results)
    assert report.resolution_line() and report.resolution_line() in out.getvalue()
    # a cache that contradicts its cell: the check still runs, the directions say why they are untested
    path.write_text(json.dumps({"scale": "smoke", "cells": [{**c, "scale": "smoke", "value": c["value"] + 0.5}
                                                            for c in cells]}))
    out = io.StringIO()
    run_check(path, baseline_path=tmp_path / "b.json", out=out, err=err)
    assert "McNemar" not in out.getvalue() and "Ablation directions:" in out.getvalue()
    assert "Not tested on the validation videos: " in out.getvalue() and "recomputes to" in out.getvalue()


# ------------------------------------------------------------------ bikebench compare: two tables of one world
def _write_table(results: Path, cells: list[dict], seed: int = 0) -> Path:
    path = results / "table6_results.json"
    path.write_text(json.dumps({"scale": "smoke", "world": {"seed": seed, "config_hash": "4cc4a16e76"}, "cells": cells}))
    return path


def test_compare_tests_each_shared_cell_on_the_videos_both_versions_scored(tmp_path, capsys):
    from harness.cli import main
    from harness.significance import compare_tables

    before, cells_b, ref_b = _table6e(tmp_path / "a", seed=0)
    after, cells_a, ref_a = _table6e(tmp_path / "b", seed=1, shuffle_trained=True)
    _write_table(before, cells_b)
    _write_table(after, cells_a[:-1])  # the second table lacks one cell
    comparison = compare_tables(before, after)
    assert len(comparison.changes) == 5 and comparison.only_before == ["6e/trained/V+A"] and not comparison.only_after
    metric = {"A": "attr_top1", "V": "video_top1", "V+A": "fused_top1"}
    for change in comparison.changes:
        _, row, column = change.key.split("/")
        now = [ref_a["hits"][row][v][metric[column]] for v in ref_a["ids"]]
        then = [ref_b["hits"][row][v][metric[column]] for v in ref_b["ids"]]
        b = sum(x and not y for x, y in zip(now, then))
        c = sum(y and not x for x, y in zip(now, then))
        assert (change.test.higher_only, change.test.lower_only) == (b, c), change.key
        assert change.after - change.before == pytest.approx(100.0 * (b - c) / 90)
        p = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
        assert change.verdict == ("noise" if p >= ALPHA or b == c else "better" if b > c else "worse")
    assert sum(comparison.counts().values()) == 5
    out = tmp_path / "cmp.md"
    assert main(["compare", str(before), str(after), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text() and printed.startswith(f"# `{after}` against `{before}`")
    assert "Only in the first table (1): 6e/trained/V+A." in printed
    assert json.loads(out.with_suffix(".json").read_text())["counts"] == comparison.counts()


def test_compare_refuses_two_worlds_and_says_why_a_cell_is_untested(tmp_path, capsys):
    import shutil

    from harness.cli import main
    from harness.significance import compare_tables

    before, cells_b, _ = _table6e(tmp_path / "a", seed=0)
    after, cells_a, _ = _table6e(tmp_path / "b", seed=1)
    _write_table(before, cells_b)
    _write_table(after, cells_a, seed=2)
    assert main(["compare", str(before), str(after)]) == 2
    assert "world differs from the first table's: seed 2 (first table: 0)" in capsys.readouterr().err
    _write_table(after, cells_a)
    shutil.rmtree(after / "runs" / "run00000000t")
    comparison = compare_tables(before, after)
    untested = [c for c in comparison.changes if c.verdict == "untested"]
    assert len(untested) == 3 and all("run00000000t/config.yaml: no such run configuration" in c.reason for c in untested)
    assert "| untested: " in comparison.to_markdown()
    # a cell whose cache contradicts it: that cell alone is untested, the cache named
    _write_table(after, [{**c, "value": c["value"] + 1.0} if c["row"] == "untrained" and c["column"] == "A" else c
                         for c in cells_a])
    changes = {c.key: c for c in compare_tables(before, after).changes}
    assert "recomputes to" in changes["6e/untrained/A"].reason and changes["6e/untrained/V"].test is not None
    assert main(["compare", str(before), str(tmp_path / "nowhere")]) == 2
    assert "no such results directory or file" in capsys.readouterr().err


def test_top5_cells_are_tested_on_their_top5_hits(tmp_path):
    from bike.engine.caches import split_cache_dir, write_cache
    from harness.significance import compare_tables

    classes = [f"c{i}" for i in range(12)]
    rng = np.random.default_rng(3)
    n = 80
    labels = rng.integers(0, 12, n)
    config = RunConfig(stage="eval", model={"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32},
                       eval={"split": "val"})
    hits = {}
    for name in ("a", "b"):
        results = tmp_path / name
        run_dir = results / "runs" / f"run0000000{name}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(config.to_yaml())
        s_v = rng.normal(size=(n, 12)).astype(np.float32)
        write_cache(split_cache_dir(run_dir, "val"), video_ids=[f"v{i}" for i in range(n)], labels=labels,
                    video_scores=s_v, classes=classes, split="val", config_hash=config.content_hash())
        # reference: the label is among the five highest scores
        hits[name] = np.array([labels[i] in np.argsort(-s_v[i])[:5] for i in range(n)])
        cell = {"table": "x", "row": "r", "column": "top5", "value": 100.0 * hits[name].mean(), "run_id": run_dir.name,
                "metric": "video_top5"}
        (results / "table6_results.json").write_text(json.dumps({"scale": "smoke", "cells": [cell]}))
    (change,) = compare_tables(tmp_path / "a", tmp_path / "b").changes
    assert (change.test.higher_only, change.test.lower_only) == (int((hits["b"] & ~hits["a"]).sum()),
                                                                int((hits["a"] & ~hits["b"]).sum()))
