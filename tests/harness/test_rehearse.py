"""`bikebench rehearse`: the full-scale plan executed for real against a synthetic mirror of its data."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bike.config import RunConfig
from bike.data.lists import read_classes, read_dataset
from harness.cli import main
from harness.expand import expand
from harness.rehearse import Mirror, RehearsalOptions, rehearsal_plan
from harness.spec import load_spec

REPO = Path(__file__).resolve().parents[2]

MICRO_SPEC = """
name: micro
family: general
dataset:
  name: ucf101
  format: frame_dir
  root: {data}/ucf101/frames
  frame_template: "image_{{:04d}}.jpg"
  train_list: {data}/ucf101/train_rgb_split_1.txt
  val_list: {data}/ucf101/val_rgb_split_1.txt
  class_file: {data}/ucf101/ucf_labels.csv
  expected_lines: {{train: 9537, val: 3783, classes: 101}}
model: {{backbone: bike-micro, pretrained: openai, frames: 8, resolution: 32}}
attributes: {{generator_backbone: bike-micro, text_encoder: bike-micro, text_encoder_pretrained: openai, lexicon: k400}}
train: {{epochs: 30, batch_size: 256}}
eval: {{clips: 2, crops: 3}}
variants:
  video:
    set: {{attributes.enabled: false}}
    cells: [{{table: 6a, row: vcs_transf_frozen, column: top1, metric: video_top1}}]
  bike:
    stage: attributes
    init_from: {{variant: video}}
    set: {{attributes.train: true}}
    cells: [{{table: 6e, row: trained, column: V+A, metric: fused_top1}}]
"""


def _spec(tmp_path: Path, text: str = MICRO_SPEC) -> Path:
    path = tmp_path / "micro.yaml"
    path.write_text(text.format(data=tmp_path / "absent"))
    return path


def test_rehearse_runs_the_full_scale_plan_with_resume_mlflow_and_report(tmp_path, capsys):
    spec = _spec(tmp_path)
    results = tmp_path / "results"
    code = main(["rehearse", str(spec), "--results", str(results), "--executor", "debug", "--poll", "0.2"])
    out = capsys.readouterr().out
    assert code == 0, out
    root = results / "rehearsal"
    report = json.loads((root / "rehearsal.json").read_text())
    assert report["ok"] and report["mlflow"] == "logged"
    runs = {r["requested_by"][0]: r for r in report["runs"]}
    assert set(runs) == {"micro.video", "micro.bike"}
    for r in runs.values():
        assert r["status"] == "done"
        # one checkpoint and resume: stopped after step 1, resumed there, then the second step
        assert r["preempted_at_step"] == 1 and r["resumed_at_step"] == 1 and len(r["step_s"]) == 2
        assert r["peak_rss_mb"] > 0 and r["parameters"] > 0
        assert r["settings"]["batch"] == 2 and r["settings"]["real_batch"] == 256
        assert r["settings"]["views"] == "2x3"  # the real views
        assert any("random weights" in c for c in r["changes"])
        assert r["run_id"] != r["real_run_id"]
    # the stage-2 run starts from the rehearsed stage-1 run, as the real plan orders them
    video, bike = runs["micro.video"], runs["micro.bike"]
    assert bike["dependencies"] == [video["run_id"]]
    bike_cfg = RunConfig.from_yaml(root / "runs" / bike["run_id"] / "config.yaml")
    assert bike_cfg.init_from == str(root / "runs" / video["run_id"])
    assert bike_cfg.train.epochs == 30 and bike_cfg.train.max_steps == 2  # the schedule's epochs are kept
    assert "fused_top1" in bike["metrics"]
    # the mirror: the released file names, every class, the real list format
    data = root / "data" / "ucf101"
    assert (data / "ucf_labels.csv").is_file() and (data / "train_rgb_split_1.txt").is_file()
    assert len(read_classes(bike_cfg.data)) == 101
    records, _ = read_dataset(bike_cfg.data, "train")
    assert len(records) == 101 * 2 and Path(records[0].path, "image_0001.jpg").is_file()
    # MLflow went to the scratch store, the cells to a table
    with sqlite3.connect(root / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] >= 2
    assert "6e" in (root / "cells.md").read_text()
    assert "rehearsal passed" in out and (root / "rehearsal.md").is_file()


def test_unknown_class_count_is_a_clear_error(tmp_path, capsys):
    text = MICRO_SPEC.replace("name: ucf101", "name: mydata").replace(", classes: 101", "")
    spec = _spec(tmp_path, text)
    code = main(["rehearse", str(spec), "--results", str(tmp_path / "results"), "--executor", "debug"])
    err = capsys.readouterr().err
    assert code == 2
    assert "mydata" in err and "dataset.expected_lines.classes" in err


ZOO_SPEC = """
name: micro_zoo
family: general
stage: eval
dataset:
  name: ucf101
  format: frame_dir
  root: {data}/ucf101/frames
  frame_template: "image_{{:04d}}.jpg"
  val_list: {data}/ucf101/val_rgb_split_1.txt
  class_file: {data}/ucf101/ucf_labels.csv
  expected_lines: {{classes: 101}}
model: {{backbone: bike-micro, pretrained: null, frames: 4, resolution: 32}}
attributes: {{enabled: false}}
variants:
  released:
    init_from: {data}/checkpoints/ucf-micro.pt
    source_url: https://example.org/ucf-micro.pt
    cells: [{{table: readme_ucf_hmdb, row: vitl14_16x224, column: ucf101, metric: video_top1}}]
"""


def test_rehearse_evaluates_a_released_checkpoint_that_is_absent_with_random_weights(tmp_path, capsys):
    """A zoo row (a released checkpoint to download) is a not-run cell of a real run, but is rehearsed: its
    evaluation runs on random weights and the report says so."""
    spec = _spec(tmp_path, ZOO_SPEC)
    results = tmp_path / "results"
    plan = expand(load_spec(spec), "full", results)
    assert not plan.runs and "not found: download it from https://example.org/ucf-micro.pt" in plan.not_run[0].reason
    code = main(["rehearse", str(spec), "--results", str(results), "--executor", "debug", "--poll", "0.2"])
    out = capsys.readouterr().out
    assert code == 0, out
    (run,) = json.loads((results / "rehearsal" / "rehearsal.json").read_text())["runs"]
    assert run["status"] == "done" and run["requested_by"] == ["micro_zoo.released"] and "video_top1" in run["metrics"]
    assert any("ucf-micro.pt absent here (a released checkpoint)" in c for c in run["changes"])


def test_steps_below_two_are_refused():
    with pytest.raises(ValueError, match="--steps 1"):
        RehearsalOptions(steps=1)


def _check_k600_split_lists(cfg: RunConfig) -> None:
    """The released K600 layout: split s = test_split<s>_exist.txt labelled 0..159 by k160_labels_split<s>.csv; the
    splits' classes differ, a video of a class in several splits is in each list, the kept videos are in every list."""
    from bike.data.lists import apply_exclude_list
    from bike.protocols import k600_split_configs

    assert [Path(p).name for p in cfg.eval.k600_split_lists] == [f"test_split{s}_exist.txt" for s in (1, 2, 3)]
    assert [Path(p).name for p in cfg.eval.k600_split_files] == [f"k160_labels_split{s}.csv" for s in (1, 2, 3)]
    classes, kept = [], []
    for split_cfg in k600_split_configs(cfg):
        records, names = read_dataset(split_cfg.data, cfg.eval.split)
        assert len(names) == 160 and sorted({r.label for r in records}) == list(range(160))
        assert all(Path(r.path).is_file() for r in records)
        classes.append(names)
        kept.append({r.video_id: names[r.label] for r in apply_exclude_list(records, split_cfg.data)[0]})
    assert len({tuple(n) for n in classes}) == 3 and all(kept) and kept[0] == kept[1] == kept[2]


SHIPPED_SPECS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("spec_name", SHIPPED_SPECS)
def test_shipped_specs_mirror_in_the_released_formats(tmp_path, spec_name):
    """Every shipped spec has a rehearsal plan: every list the rewritten full-scale runs read parses with the
    released formats' readers, with the real class count (and the K600 splits name classes of the class file)."""
    spec = load_spec(REPO / "experiments" / f"{spec_name}.yaml")
    plan = expand(spec, "full", tmp_path / "results", absent_checkpoints="plan")
    new = rehearsal_plan(plan, RehearsalOptions(per_class=1))
    assert new.runs
    # every variant that runs at full scale is rehearsed (the zoo's released checkpoints are absent here)
    assert {v for r in new.runs for s, v in r.requested_by if s == spec.name} == {
        name for name, v in spec.variants.items() if "full" in v.run_at}
    if spec_name == "zero_shot_half":  # the released K600 protocol's split lists are mirrored
        assert sum(bool(r.config.eval.k600_split_lists) for r in new.runs) == 1
    for run in new.runs:
        cfg = run.config
        assert str(tmp_path) in cfg.data.class_file
        assert len(read_classes(cfg.data)) == Mirror.class_count(cfg)
        for split in ("train", "val"):
            if getattr(cfg.data, f"{split}_list") and (split == "val" or run.kind == "train"):
                records, _ = read_dataset(cfg.data, split)
                assert records
        if cfg.eval.protocol == "zero_shot_k600" and cfg.eval.k600_split_lists:
            _check_k600_split_lists(cfg)
        elif cfg.eval.protocol == "zero_shot_k600":
            from bike.protocols import k600_splits

            splits = k600_splits(cfg.eval.k600_split_files, read_classes(cfg.data), split_size=160)
            assert len(splits) == 3
        for dep in run.dependencies:
            assert cfg.init_from.endswith(dep)


def test_half_class_evaluation_keeps_a_video_of_every_split(tmp_path):
    """The half-class zero-shot protocol evaluates each of its 10 splits on the videos of its classes and refuses a
    split without any, so a rehearsal keeping one evaluation video (--val-videos 1) must keep a video of some class
    of every split (a rehearsal of zero_shot_half.yaml failed: 'class split [1, 2, 3, 4, 5]...: no video has a
    label in it')."""
    from bike.data.lists import apply_exclude_list

    spec = load_spec(REPO / "experiments" / "zero_shot_half.yaml")
    plan = expand(spec, "full", tmp_path / "results", absent_checkpoints="plan")
    new = rehearsal_plan(plan, RehearsalOptions(per_class=1, val_videos=1))
    half = [r for r in new.runs if r.config.eval.protocol == "zero_shot_half"]
    assert {r.requested_by[0][1] for r in half} == {"ucf101", "hmdb51", "anet"}
    for run in half:
        cfg = run.config
        records, names = read_dataset(cfg.data, cfg.eval.split)
        kept, _ = apply_exclude_list(records, cfg.data)
        labels = {r.label for r in kept}
        # the splits as the released code draws them: np.random.seed(s); np.random.permutation(C)[:C // 2]
        # (the same stream as a RandomState(s), which leaves the global generator alone)
        for s in range(cfg.eval.zero_shot_splits):
            split = set(np.random.RandomState(s).permutation(len(names))[: len(names) // 2].tolist())
            assert labels & split, (run.requested_by, s)
        assert len(kept) <= cfg.eval.zero_shot_splits  # a cover, not the whole list


MICRO_K600 = """
name: micro_k600
family: zero-shot-half
dataset:
  name: k600
  root: {data}/k600/k600_test_video
  val_list: {data}/k600/test_split1_exist.txt
  class_file: {data}/k600/k160_labels_split1.csv
  expected_lines: {{val: 14119, classes: 160}}
model: {{backbone: bike-micro, pretrained: openai, frames: 8, resolution: 32}}
attributes: {{enabled: false}}
eval:
  protocol: zero_shot_k600
  zero_shot_path: full
  k600_split_lists: [{data}/k600/test_split1_exist.txt, {data}/k600/test_split2_exist.txt, {data}/k600/test_split3_exist.txt]
  k600_split_files: [{data}/k600/k160_labels_split1.csv, {data}/k600/k160_labels_split2.csv, {data}/k600/k160_labels_split3.csv]
variants:
  k600:
    stage: eval
    cells: [{{table: "5", row: bike_vitl14, column: k600, metric: zs_k600_mean}}]
"""


def test_rehearse_executes_the_released_k600_split_lists(tmp_path, capsys):
    """The released K600 protocol rehearsed end to end: the three mirrored split lists are evaluated, each
    against its own class file, into its own cache."""
    spec = _spec(tmp_path, MICRO_K600)
    results = tmp_path / "results"
    code = main(["rehearse", str(spec), "--results", str(results), "--executor", "debug", "--poll", "0.2"])
    out = capsys.readouterr().out
    assert code == 0, out
    root = results / "rehearsal"
    (run,) = json.loads((root / "rehearsal.json").read_text())["runs"]
    assert run["status"] == "done" and {"zs_k600_mean", "zs_k600_std", "zs_k600_split2", "top1"} <= set(run["metrics"])
    result = json.loads((root / "runs" / run["run_id"] / "result.json").read_text())
    assert [(s["videos"], s["classes"]) for s in result["k600_splits"]] == [(2, 160)] * 3
    assert [Path(s["list"]).name for s in result["k600_splits"]] == [f"test_split{s}_exist.txt" for s in (1, 2, 3)]
    for s in (1, 2, 3):
        assert (root / "runs" / run["run_id"] / "cache" / f"val_k600_split{s}" / "manifest.json").is_file()
