"""Table 6 end to end at smoke scale with a stand-in engine: runs, cells, files, MLflow, re-run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from harness.expand import expand
from harness.spec import load_spec
from harness.table6 import TABLE6_SPEC, collect_cells, plain_markdown, result_metric, run_table6
from harness.tracking import TAG_PARENT_KEY, TAG_RUN_ID, Tracker, default_tracking_uri
from worldstub import fake_world


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

    cells = json.loads((results / "table6_results.json").read_text())
    assert cells == json.loads((results / "table6_results_smoke.json").read_text())
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
    assert {a.path for a in tracker.client.list_artifacts(parents[0].info.run_id)} >= {"table6.md", "table6_results.json"}
    children = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` != ''")
    assert sorted(r.data.tags[TAG_RUN_ID] for r in children) == sorted(r.run_id for r in plan.runs)
    assert all(r.info.status == "FINISHED" for r in children)

    # the same command again: nothing runs, nothing is duplicated, the same cells come back
    drive2 = run_table6(**{**kwargs, "out": io.StringIO()})
    assert {o.action for o in drive2.outcomes.values()} == {"skipped-done"}
    assert len(calls) == len(plan.runs)
    assert json.loads((results / "table6_results.json").read_text()) == cells
    children2 = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` != ''")
    assert len(children2) == len(children)
    assert len(tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_PARENT_KEY}` != ''")) == 1

    check = pytest.importorskip("harness.check")
    assert len(check.load_results(results / "table6_results.json")) == 36


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
    pytest.importorskip("bike.train")
    pytest.importorskip("bike.evaluate")
    import yaml

    from harness.table6 import run_specs

    body = {"name": "engine", "family": "general", "dataset": _tiny_dataset(tmp_path / "data"),
            "model": {"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32, "temporal_layers": 1},
            "attributes": {"lexicon": str(tmp_path / "data" / "lexicon.txt"), "max_attributes": 4, "num_attributes": 2},
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
