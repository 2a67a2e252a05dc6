"""Table 6 end to end at smoke scale with a stand-in engine: runs, cells, files, MLflow, re-run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from bike.config import RunConfig
from harness.expand import expand
from harness.spec import load_spec
from harness.drive import collect_cells, result_metric
from harness.table6 import TABLE6_LAMBDA, TABLE6_SPEC, plain_markdown, run_table6, study_lambda_cells
from harness.tuning import StudyLambdaError, load_study_lambda
from harness.tracking import TAG_PARENT_KEY, TAG_RUN_ID, Tracker, default_tracking_uri
from tests.harness.worldstub import fake_world


def stand_in_engine(calls: list):
    """Writes result.json like bike.train/bike.evaluate: metrics under "metrics", in percent."""

    def run(config, run_dir):
        run_dir = Path(run_dir)
        calls.append(run_dir.name)
        if config.init_from:
            assert json.loads((Path(config.init_from) / "result.json").read_text())["status"] == "done"
        seed = int(config.content_hash()[:6], 16)
        metrics = {"video_top1": 40 + seed % 30, "attr_top1": 20 + seed % 17, "fused_top1": 45 + seed % 29}
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "time": 1.0, "kind": "train", "loss": 2.0}) + "\n")
        result = {"status": "done", "run_id": config.content_hash(), "metrics": metrics, "counts": {"evaluated": 4}}
        (run_dir / "result.json").write_text(json.dumps(result))
        return result

    return run


def test_result_metric_lookup():
    res = {"video_top1": 1.0, "metrics": {"fused_top1": 2.5, "nan": float("nan")}, "splits": {"val": {"top1": 3}}}
    assert result_metric(res, "video_top1") == 1.0
    assert result_metric(res, "fused_top1") == 2.5
    assert result_metric(res, "splits.val.top1") == 3.0
    assert result_metric(res, "nan") is None and result_metric(res, "absent") is None


def test_table6_smoke_end_to_end(tmp_path):
    results = tmp_path / "results"
    uri = default_tracking_uri(results)
    calls: list[str] = []
    engine = stand_in_engine(calls)
    out = io.StringIO()
    kwargs = dict(scale="smoke", cluster="debug", results=results, tracking_uri=uri, world=fake_world(tmp_path),
                  job_targets={"train": engine, "evaluate": engine}, out=out)
    drive = run_table6(**kwargs)
    assert drive.ok
    plan = expand(load_spec(TABLE6_SPEC), "smoke", results, world=fake_world(tmp_path))
    assert sorted(calls) == sorted(r.run_id for r in plan.runs)  # every distinct run ran exactly once

    document = json.loads((results / "table6_results.json").read_text())
    assert document == json.loads((results / "table6_results_smoke.json").read_text())
    assert document["scale"] == "smoke" and set(document) == {"scale", "world", "train_seeds", "cells", "directions"}
    assert document["train_seeds"] == [0]  # the spec's runs all train with the default seed
    cells = document["cells"]
    assert {"table", "row", "column", "value", "scale", "run_id"} <= set(cells[0])
    by_key = {(c["table"], c["row"], c["column"]): c for c in cells}
    assert len(by_key) == len(cells) == 36
    assert {c["scale"] for c in cells} == {"smoke"}
    # shared runs: "Ours" fills 6e/6f/6g/6h/6i with the same run, and identical values where the metric is shared
    ours = [by_key[k] for k in [("6e", "trained", "V+A"), ("6f", "ours", "V+A"), ("6g", "k400", "V+A"), ("6h", "bike", "top1")]]
    assert len({c["run_id"] for c in ours}) == 1 and len({c["value"] for c in ours}) == 1
    assert by_key[("6a", "vcs", "top1")]["run_id"] == by_key[("6b", "word_cls", "top1")]["run_id"]
    run_dir = results / "runs" / by_key[("6d", "k3", "A")]["run_id"]
    assert by_key[("6d", "k3", "A")]["value"] == json.loads((run_dir / "result.json").read_text())["metrics"]["attr_top1"]

    missing = {(m["table"], m["row"], m["column"]): m["reason"] for m in json.loads((results / "table6_missing.json").read_text())}
    assert "not run at smoke scale" in missing[("6i", "vit_l14", "V*")]
    assert ("6h", "actionclip", "top1") in missing
    assert all(k not in missing for k in by_key)

    text = (results / "table6.md").read_text()
    assert text in out.getvalue()
    assert "6a" in text and f"{by_key[('6a', 'mean_pool', 'top1')]['value']:.1f}" in text

    tracker = Tracker(results, uri)
    exp = tracker.client.get_experiment_by_name("table6")
    parents = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_PARENT_KEY}` = 'table6:smoke'")
    assert len(parents) == 1
    assert {a.path for a in tracker.client.list_artifacts(parents[0].info.run_id)} >= {
        "table6.md", "table6.html", "table6.tex", "table6_results.json"}
    assert (results / "table6.html").read_text().lower().startswith("<!doctype html>") and "\\begin{table" in (results / "table6.tex").read_text()
    # the parent run is the table: each cell of ours and its Δ to the paper, the spec/scale/profile/commit, ended
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["scale"] == "smoke" and parent.data.params["spec"] == "table6"
    assert parent.data.metrics["6a/vcs/top1"] == pytest.approx(by_key[("6a", "vcs", "top1")]["value"])
    assert "6a/vcs/top1/delta" in parent.data.metrics
    # the ablation directions: in the report, the results document and on the parent run
    dirs = document["directions"]
    assert dirs["total"] == 46 and 0 <= dirs["reproduced"] <= 46 and len(dirs["misses"]) == 46 - dirs["reproduced"]
    assert f"Ablation directions: {dirs['reproduced']} of 46 reproduced" in text
    assert parents[0].data.metrics["ablation_directions_reproduced"] == dirs["reproduced"]
    for band in dirs["by_paper_gap"]:  # and split by the paper's gap between the two cells
        slug = band["band"].replace("<= ", "le").replace("> ", "gt")
        assert parents[0].data.metrics[f"ablation_directions_gap_{slug}_share"] == pytest.approx(
            100.0 * band["reproduced"] / band["total"])
    assert sum(b["total"] for b in dirs["by_paper_gap"]) == 46
    # the stand-in engine caches no scores: no direction can be tested, and the report says none was
    assert dirs["resolution"] is None and dirs["tests"] == [] and "McNemar" not in text
    children = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` != ''")
    assert sorted(r.data.tags[TAG_RUN_ID] for r in children) == sorted(r.run_id for r in plan.runs)
    assert all(r.info.status == "FINISHED" for r in children)

    # the same command again: nothing runs, nothing is duplicated, the same cells come back
    drive2 = run_table6(**{**kwargs, "out": io.StringIO()})
    assert {o.action for o in drive2.outcomes.values()} == {"skipped-done"}
    assert len(calls) == len(plan.runs)
    assert json.loads((results / "table6_results.json").read_text())["cells"] == cells
    children2 = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` != ''")
    assert len(children2) == len(children)
    assert len(tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_PARENT_KEY}` != ''")) == 1

    from harness import check
    assert len(check.load_results(results / "table6_results.json")) == 36


def test_table6_says_where_its_time_went(tmp_path):
    """The report ends with one line splitting the invocation's time: the world (its first call builds it),
    the runs, the rest; a rerun that finds every run done says so."""
    import time

    world_s, run_s = 0.3, 0.02
    stub = fake_world(tmp_path)
    built: list[str] = []

    def slow_world(split):  # building the world: slow once, as the real provider is
        if not built:
            built.append(split)
            time.sleep(world_s)
        return stub(split)

    def engine(config, run_dir):
        time.sleep(run_s)
        return stand_in_engine([])(config, run_dir)

    kwargs = dict(scale="smoke", cluster="debug", results=tmp_path / "results", world=slow_world, track=False,
                  job_targets={"train": engine, "evaluate": engine})
    out = io.StringIO()
    t0 = time.perf_counter()
    drive = run_table6(**kwargs, out=out)
    wall = time.perf_counter() - t0
    n = len(drive.plan.runs)
    timings = drive.timings
    assert set(timings) == {"world_s", "plan_s", "runs_s", "collect_s", "tables_s"}
    assert timings["world_s"] >= world_s and timings["runs_s"] >= n * run_s
    assert min(timings.values()) >= 0 and sum(timings.values()) <= wall
    lines = [line for line in out.getvalue().splitlines() if line.startswith("Time: ")]
    assert len(lines) == 1 and f"({n} run here, 1 at a time; 0 done before)" in lines[0]
    assert "world " in lines[0] and "tables, pictures and the MLflow parent " in lines[0]

    out = io.StringIO()
    drive = run_table6(**kwargs, out=out)
    assert drive.timings["world_s"] < world_s  # the stand-in's "build" happened once
    assert f"(0 run here, 1 at a time; {n} done before)" in out.getvalue()


def test_failed_runs_leave_their_cells_missing_with_a_reason(tmp_path):
    results = tmp_path / "results"

    def engine(config, run_dir):
        if config.stage == "attributes":
            raise RuntimeError("stage 2 broke")
        return stand_in_engine([])(config, run_dir)

    drive = run_table6(scale="smoke", cluster="debug", results=results, world=fake_world(tmp_path), track=False,
                       job_targets={"train": engine, "evaluate": engine}, out=io.StringIO())
    assert not drive.ok
    missing = {(m["table"], m["row"], m["column"]): m["reason"] for m in drive.missing}
    assert missing[("6e", "trained", "V+A")] == "run is failed"
    assert missing[("6i", "vit_b32", "V*")] == "run is pending"  # its dependency (stage 2) failed
    assert ("6a", "mean_pool", "top1") in {(c["table"], c["row"], c["column"]) for c in drive.cells}


def test_plain_markdown_fallback():
    text = plain_markdown([{"table": "6a", "row": "vcs", "column": "top1", "value": 12.345, "scale": "smoke", "run_id": "r"}],
                          [{"table": "6h", "row": "actionclip", "column": "top1", "reason": "paper only"}], "T")
    assert "| 6a | vcs | top1 | 12.35 | smoke | r |" in text and "paper only" in text


def test_collect_cells_reads_only_done_runs(tmp_path):
    plan = expand(load_spec(TABLE6_SPEC), "full", tmp_path)
    cells, missing = collect_cells(plan)
    assert cells == [] and all(m["reason"] in ("run is pending",) or "published" in m["reason"] for m in missing)


def _tiny_dataset(root: Path) -> dict:
    """Three colour classes of 6-frame 32² mp4s: the DataConfig fields of the dataset."""
    import numpy as np

    from bike.data.video_io import write_mp4

    names = ["red", "green", "blue"]
    rgb = [(220, 40, 40), (40, 200, 60), (50, 80, 230)]
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "classes.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    for split, per in (("train", 4), ("val", 2)):
        lines = []
        for k, colour in enumerate(rgb):
            for j in range(per):
                frames = rng.integers(90, 140, (6, 32, 32, 3), dtype=np.uint8)
                frames[:, 8:24, 8:24] = colour
                write_mp4(root / split / f"{k}_{j}.mp4", frames)
                lines.append(f"{split}/{k}_{j}.mp4 {k}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "lexicon.txt").write_text("a red square\na green square\na blue square\na grey wall\n")
    return {"name": "tiny", "root": str(root), "train_list": str(root / "train.txt"), "val_list": str(root / "val.txt"),
            "class_file": str(root / "classes.csv"), "num_workers": 0, "tuning_holdout": 0.0}


@pytest.mark.slow
def test_the_real_engine_plugs_in(tmp_path):
    """bike.train / bike.evaluate (the default job kinds) through the harness: stage 1, stage 2, eval."""
    import yaml

    from harness.drive import run_specs

    body = {"name": "engine", "family": "general", "dataset": _tiny_dataset(tmp_path / "data"),
            "model": {"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32, "temporal_layers": 1},
            "attributes": {"lexicon": str(tmp_path / "data" / "lexicon.txt"), "max_attributes": 4, "num_attributes": 2,
                           "text_encoder": "bike-micro", "text_encoder_pretrained": None,
                           "generator_backbone": "bike-micro", "generator_pretrained": None},
            "train": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0, "precision": "fp32", "log_every": 1},
            "eval": {"batch_size": 6},
            "variants": {
                "video": {"set": {"attributes.enabled": False}, "cells": [{"table": "6a", "row": "vcs_transf_frozen", "column": "top1", "metric": "video_top1"}]},
                "bike": {"stage": "attributes", "init_from": {"variant": "video"}, "set": {"attributes.train": True},
                         "cells": [{"table": "6e", "row": "trained", "column": "V+A", "metric": "fused_top1"}]},
                "untrained": {"stage": "eval", "init_from": {"variant": "video"}, "cells": [{"table": "6d", "row": "k3", "column": "A", "metric": "attr_top1"}]},
            }}
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump(body))
    drive = run_specs([load_spec(tmp_path / "engine.yaml")], scale="full", cluster="debug", results=tmp_path / "results",
                      track=False, log=lambda m: None)
    assert drive.ok, drive.outcomes
    assert sorted((c["table"], c["row"], c["column"]) for c in drive.cells) == [
        ("6a", "vcs_transf_frozen", "top1"), ("6d", "k3", "A"), ("6e", "trained", "V+A")]
    assert all(0.0 <= c["value"] <= 100.0 for c in drive.cells)
    for run in drive.plan.runs:
        result = json.loads((run.run_dir / "result.json").read_text())
        assert result["run_id"] == run.run_id and (run.run_dir / "log.txt").exists()


# ------------------------------------------------------------------ fused cells at a study's λ (--lambda-from)
CLASSES = [f"class{c}" for c in range(5)]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _direct(s_v: np.ndarray, s_a: np.ndarray, labels: np.ndarray, lam: float, metric: str = "top1") -> float:
    """The fused metric by hand: λ·softmax(S_V) + (1 − λ)·softmax(S_A), argmax, unlabelled rows skipped, percent."""
    keep = labels >= 0
    pred = (lam * _softmax(s_v) + (1 - lam) * _softmax(s_a)).argmax(axis=1)[keep]
    y = labels[keep]
    if metric == "mean_class":
        return 100.0 * float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))
    return 100.0 * float(np.mean(pred == y))


def _write_cached_run(run_dir: Path, config: RunConfig, seed: int, n: int = 120, classes=CLASSES) -> dict:
    """A run directory with config.yaml and cache/<eval.split>/ (the engine's writer); returns the arrays
    and the fused metrics at the run's own λ as evaluation computes them (bike.fusion.fuse, float64)."""
    from bike.engine.caches import split_cache_dir, write_cache
    from bike.fusion import fuse
    from bike.metrics import mean_class_accuracy, topk_accuracy

    rng = np.random.default_rng(seed)
    k = len(classes)
    labels = rng.integers(0, k, n)
    labels[:3] = -1  # unlabelled rows: skipped by every metric
    s_v = rng.normal(scale=0.6, size=(n, k)).astype(np.float32)
    s_a = rng.normal(scale=0.6, size=(n, k)).astype(np.float32)
    s_v[np.arange(n), np.maximum(labels, 0)] += 0.7
    s_a[np.arange(n), np.maximum(labels, 0)] += 0.5 * rng.random(n).astype(np.float32) * 2
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    write_cache(split_cache_dir(run_dir, config.eval.split), video_ids=[f"v{i}" for i in range(n)], labels=labels,
                video_scores=s_v, classes=list(classes), split=config.eval.split, config_hash=config.content_hash(),
                attr_scores=s_a)
    fused = fuse(s_v, s_a, config.fusion_lambda, config.fusion.transform, dtype=np.float64)
    metrics = {"video_top1": float(topk_accuracy(s_v, labels, ks=(1,))["top1"]),
               "fused_top1": float(topk_accuracy(fused, labels, ks=(1,))["top1"]),
               "fused_mean_class": float(mean_class_accuracy(fused, labels))}
    (run_dir / "result.json").write_text(json.dumps({"status": "done", "run_id": run_dir.name, "metrics": metrics}))
    return {"s_v": s_v, "s_a": s_a, "labels": labels, "metrics": metrics}


def _write_best(path: Path, lam: float, classes=CLASSES, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    best = {"study": path.parent.name, "objective": "fused_top1", "best_value": 0.5, "best_params": {"k": 4, "lam": lam},
            "best_lambda": lam, "lam_interval": [lam - 0.01, lam + 0.01], "n_complete": 6, "tune_on": "holdout",
            "split": "tune", "transform": "softmax", "classes": list(classes), **extra}
    path.write_text(json.dumps(best))
    return path


def _eval_config(lam: float = 0.6) -> RunConfig:
    return RunConfig(stage="eval", model={"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32},
                     eval={"split": "val"}, fusion={"lam": lam, "transform": "softmax"})


def test_fused_cells_recomputed_at_the_study_lambda_equal_a_direct_fusion(tmp_path):
    results = tmp_path / "results"
    run = _write_cached_run(results / "runs" / "run000000001", _eval_config(0.6), seed=0)
    s_v, s_a, y = run["s_v"], run["s_a"], run["labels"]
    lam = 0.15
    assert _direct(s_v, s_a, y, lam) != _direct(s_v, s_a, y, 0.6)  # λ matters on these scores
    _write_best(results / "studies/st/best.json", lam)
    best = load_study_lambda("st", results)  # a study name under <results>/studies/
    assert load_study_lambda(results / "studies/st", results).path == load_study_lambda(best.path).path == best.path
    base = {"scale": "smoke", "run_id": "run000000001"}
    cells = [{**base, "table": "6e", "row": "trained", "column": "V+A", "metric": "fused_top1", "value": run["metrics"]["fused_top1"]},
             {**base, "table": "6x", "row": "r", "column": "mc", "metric": "fused_mean_class", "value": run["metrics"]["fused_mean_class"]},
             {**base, "table": "6e", "row": "trained", "column": "V", "metric": "video_top1", "value": run["metrics"]["video_top1"]}]
    out, notes = study_lambda_cells(cells, results, best)
    top1, mean_class, video = out
    assert top1["value"] == pytest.approx(_direct(s_v, s_a, y, lam), abs=1e-9)
    assert mean_class["value"] == pytest.approx(_direct(s_v, s_a, y, lam, "mean_class"), abs=1e-9)
    assert top1["fixed_value"] == run["metrics"]["fused_top1"] == pytest.approx(_direct(s_v, s_a, y, 0.6), abs=1e-9)
    assert top1["value"] != top1["fixed_value"] and top1["fixed_lambda"] == 0.6 and top1["lambda"] == lam
    assert top1["lambda_split"] == "val" and top1["lambda_from"] == "st"
    assert video == cells[2]  # not a fused metric: untouched
    assert "λ = 0.15 from study `st`" in notes[0] and "tuned on the tune split, jointly with k = 4" in notes[0]
    assert not any("REPORTED SPLIT" in n or "may not be" in n for n in notes)
    # a study tuned on the reported split is flagged loudly
    _write_best(results / "studies/rep/best.json", lam, tune_on="reported", split="val")
    _, notes = study_lambda_cells(cells, results, load_study_lambda("rep", results))
    assert any(n.startswith("**⚠ λ WAS TUNED ON THE REPORTED SPLIT**") for n in notes)
    # a result.json value the cache does not reproduce is pointed out
    _, notes = study_lambda_cells([{**cells[0], "value": 1.0}], results, best)
    assert any("not the 1.0000 of result.json" in n for n in notes)


@pytest.mark.parametrize("score_kind", ["logits", "probabilities"])
@pytest.mark.parametrize("lam", [0.0, 0.15, 0.6, 1.0])
def test_evaluation_tuning_and_lambda_from_give_the_same_fused_top1(tmp_path, score_kind, lam):
    """One fusion (bike.fusion): evaluation's metrics (eval_loop.protocol_metrics on the cached scores, as
    when a cache is reused), the tuning problem (exact curve, sampled trial) and --lambda-from
    (fused_metric) count the same correct videos on one cached split at one λ — and so does Eq. 4 by hand."""
    from bike.engine.caches import load_score_cache, split_cache_dir, write_cache
    from bike.engine.eval_loop import _scores_from_cache, protocol_metrics
    from harness.tuning import FusionProblem, fused_metric

    rng = np.random.default_rng(7)
    n, k = 150, len(CLASSES)
    labels = rng.integers(0, k, n)
    labels[:4] = -1  # unlabelled rows: skipped by every path
    s_v = rng.normal(scale=0.8, size=(n, k))
    s_v[np.arange(n), np.maximum(labels, 0)] += 0.6
    if score_kind == "probabilities":  # multi-view softmax_mean: already the softmax side
        s_v = np.stack([_softmax(s_v + rng.normal(scale=0.3, size=(n, k))) for _ in range(3)]).mean(axis=0)
    s_a = rng.normal(scale=0.6, size=(n, k))
    s_a[np.arange(n), np.maximum(labels, 0)] += rng.random(n)
    config = _eval_config(lam)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.to_yaml())
    write_cache(split_cache_dir(run, "val"), video_ids=[f"v{i}" for i in range(n)], labels=labels, video_scores=s_v,
                classes=CLASSES, split="val", config_hash=config.content_hash(), score_kind=score_kind, attr_scores=s_a)
    cache = load_score_cache(run, "val")
    v, a = np.asarray(cache.video_scores, np.float64), np.asarray(cache.attr_scores, np.float64)
    t_v = v if score_kind == "probabilities" else _softmax(v)
    keep = labels >= 0
    by_hand = int(((lam * t_v + (1 - lam) * _softmax(a)).argmax(axis=1) == labels)[keep].sum())  # Eq. 4 written out

    evaluation = protocol_metrics(config, _scores_from_cache(cache, views=3), np.asarray(cache.attr_scores))["fused_top1"]
    lambda_from = fused_metric(cache, lam, "top1")
    problem = FusionProblem(cache, default_transform="softmax")
    exact, sampled = float(np.ravel(problem.curve(None).at(lam))[0]), problem.evaluate(None, lam)
    n_kept = int(keep.sum())
    assert evaluation.evaluated == n_kept and evaluation == lambda_from  # the same function, bit for bit
    assert round(evaluation * n_kept / 100) == round(exact * n_kept) == round(sampled * n_kept) == by_hand
    assert by_hand < n_kept  # not trivially all correct


def test_lambda_from_refuses_missing_unreadable_and_foreign_studies(tmp_path):
    results = tmp_path / "results"
    _write_cached_run(results / "runs" / "run000000002", _eval_config(), seed=1)
    cell = {"table": "6d", "row": "k3", "column": "V+A", "metric": "fused_top1", "value": 50.0, "run_id": "run000000002"}
    with pytest.raises(StudyLambdaError, match=r"study 'nope': no best\.json at .*nope/best\.json or .*studies/nope/best\.json"):
        load_study_lambda("nope", results)
    bad = results / "studies/bad/best.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(StudyLambdaError, match=r"bad/best\.json: not a readable JSON file"):
        load_study_lambda("bad", results)
    _write_best(bad, 0.3)
    raw = json.loads(bad.read_text())
    bad.write_text(json.dumps({k: v for k, v in raw.items() if k != "best_lambda"}))
    with pytest.raises(StudyLambdaError, match=r"bad/best\.json: field 'best_lambda': expected a number in \[0, 1\], got None"):
        load_study_lambda("bad", results)
    bad.write_text(json.dumps({k: v for k, v in raw.items() if k != "classes"}))  # old best.json, no source run
    with pytest.raises(StudyLambdaError, match=r"no field 'classes'.*cannot be\s+checked"):
        load_study_lambda("bad", results)
    other = list(CLASSES)
    other[2] = "juggling"
    foreign = load_study_lambda(_write_best(results / "studies/foreign/best.json", 0.3, classes=other))
    with pytest.raises(StudyLambdaError, match=r"foreign/best\.json: the study's classes .* do not match cell 6d/k3/V\+A "
                                               r"\(run run000000002\): .*val/manifest\.json lists other classes "
                                               r"\(class 2: 'class2' vs the study's 'juggling'\)"):
        study_lambda_cells([cell], results, foreign)
    fewer = load_study_lambda(_write_best(results / "studies/fewer/best.json", 0.3, classes=CLASSES[:4]))
    with pytest.raises(StudyLambdaError, match=r"5 classes vs the study's 4"):
        study_lambda_cells([cell], results, fewer)
    (results / "runs/run000000002/cache/val/attr_scores.npy").unlink()
    ok = load_study_lambda(_write_best(results / "studies/ok/best.json", 0.3))
    with pytest.raises(StudyLambdaError, match=r"cell 6d/k3/V\+A \(run run000000002\): cannot recompute .*attr_scores\.npy"):
        study_lambda_cells([cell], results, ok)


def cached_engine(calls: list):
    """Like stand_in_engine, but every run also caches its scores of the reported split (engine layout),
    and result.json's fused_top1 is what evaluation computes from them at the run's own λ."""

    def run(config, run_dir):
        from bike.metrics import topk_accuracy

        calls.append(Path(run_dir).name)
        seed = int(config.content_hash()[:6], 16)
        written = _write_cached_run(Path(run_dir), config, seed=seed, n=60)
        attr_top1 = float(topk_accuracy(written["s_a"], written["labels"], ks=(1,))["top1"])
        metrics = {**written["metrics"], "attr_top1": attr_top1}
        (Path(run_dir) / "result.json").write_text(json.dumps({"status": "done", "run_id": config.content_hash(),
                                                               "metrics": metrics, "counts": {"evaluated": 60}}))
        return {"status": "done"}

    return run


def test_table6_lambda_from_a_study_end_to_end(tmp_path):
    """`run_table6(lambda_from=...)`: fused cells at the study's λ in table6.md (fixed λ beside), table6_lambda.json,
    table6_results.json unchanged, both files attached in MLflow; nothing re-runs."""
    results = tmp_path / "results"
    uri = default_tracking_uri(results)
    calls: list[str] = []
    engine = cached_engine(calls)
    kwargs = dict(scale="smoke", cluster="debug", results=results, tracking_uri=uri, world=fake_world(tmp_path),
                  job_targets={"train": engine, "evaluate": engine})
    assert run_table6(**kwargs, out=io.StringIO()).ok
    fixed_cells = json.loads((results / "table6_results.json").read_text())["cells"]
    # every direction tested on the videos from the runs' caches (harness.significance): 60 videos, 3 unlabelled
    dirs = json.loads((results / "table6_results.json").read_text())["directions"]
    assert dirs["resolution"]["untested"] == 0 and sum(dirs["resolution"].values()) == dirs["total"] == len(dirs["tests"])
    assert all(t["n_videos"] == 57 for t in dirs["tests"])
    assert "On the 57 validation videos (McNemar's exact test, α = 0.05): " in (results / "table6.md").read_text()
    assert not (results / TABLE6_LAMBDA).exists()
    n_runs = len(calls)
    _write_best(results / "studies/lambda_k_world_general/best.json", 0.2)
    out = io.StringIO()
    assert run_table6(**kwargs, out=out, lambda_from="lambda_k_world_general").ok
    assert len(calls) == n_runs  # nothing re-ran
    assert json.loads((results / "table6_results.json").read_text())["cells"] == fixed_cells
    recomputed = json.loads((results / TABLE6_LAMBDA).read_text())
    fused = {(c["table"], c["row"], c["column"]): c for c in fixed_cells if c["metric"] == "fused_top1"}
    assert {(c["table"], c["row"], c["column"]) for c in recomputed} == set(fused) and len(fused) >= 10
    for c in recomputed:
        run_dir = results / "runs" / c["run_id"]
        cache = {n: np.load(run_dir / f"cache/val/{n}.npy") for n in ("video_scores", "attr_scores", "labels")}
        assert c["value"] == pytest.approx(_direct(cache["video_scores"], cache["attr_scores"], cache["labels"], 0.2), abs=1e-9)
        assert c["fixed_value"] == fused[(c["table"], c["row"], c["column"])]["value"]
    text = (results / "table6.md").read_text()
    assert text in out.getvalue() and "λ = 0.2 from study `lambda_k_world_general`" in text
    assert "may not be the one" not in text  # every cache gives back its result.json value at the run's own λ
    c = next(c for c in recomputed if (c["table"], c["row"], c["column"]) == ("6e", "trained", "V+A"))
    assert f"| {c['value']:.1f} (λ={c['fixed_lambda']:.3g}: {c['fixed_value']:.1f}) |" in text
    tracker = Tracker(results, uri)
    exp = tracker.client.get_experiment_by_name("table6")
    parent = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_PARENT_KEY}` = 'table6:smoke'")[0]
    assert {a.path for a in tracker.client.list_artifacts(parent.info.run_id)} >= {"table6.md", TABLE6_LAMBDA}


def test_cli_table6_lambda_from(tmp_path, monkeypatch, capsys):
    """`bikebench table6 --lambda-from STUDY`: the study is read before anything runs; a missing one exits 2."""
    import harness.table6
    from harness.cli import main as bikebench

    results = tmp_path / "results"
    assert bikebench(["table6", "--scale", "full", "--results", str(results), "--lambda-from", "nope", "--no-track"]) == 2
    assert "study 'nope': no best.json at" in capsys.readouterr().err
    assert not (results / "runs").exists()
    _write_best(results / "studies/st/best.json", 0.4)
    seen = {}

    def fake_run_table6(**kwargs):
        seen.update(kwargs)
        return type("D", (), {"ok": True})()

    monkeypatch.setattr(harness.table6, "run_table6", fake_run_table6)
    assert bikebench(["table6", "--scale", "full", "--results", str(results), "--lambda-from", "st", "--no-track"]) == 0
    assert seen["lambda_from"].best_lambda == 0.4 and seen["lambda_from"].study == "st"


@pytest.mark.parametrize("field,value,message", [
    ("lam_interval", [True, False], r"field 'lam_interval': expected \[lo, hi\] with 0 <= lo <= hi <= 1"),
    ("lam_interval", [float("nan"), 0.5], r"field 'lam_interval': expected \[lo, hi\]"),
    ("lam_interval", [0.6, 0.2], r"field 'lam_interval': expected \[lo, hi\] with 0 <= lo <= hi <= 1, got \[0.6, 0.2\]"),
    ("best_params", [4, 0.3], r"field 'best_params': expected an object of parameter values, got \[4, 0.3\]"),
    ("study", "another_study", r"field 'study': expected 'named' \(the study asked for\), got 'another_study'"),
])
def test_a_malformed_best_json_is_refused_naming_the_field(tmp_path, field, value, message):
    results = tmp_path / "results"
    best = _write_best(results / "studies/named/best.json", 0.3)
    raw = json.loads(best.read_text())
    assert load_study_lambda("named", results).best_lambda == 0.3  # the well-formed file reads
    best.write_text(json.dumps({**raw, field: value}))
    with pytest.raises(StudyLambdaError, match=message):
        load_study_lambda("named", results)

