"""Harness pictures and console (``harness.figures``, the driver's progress lines, ``bikebench status``,
pre-flight of data files and local tasks)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import yaml

from bike.config import RunConfig
from bike.engine.caches import write_cache
from bike.fusion import fuse
from harness.cli import main
from harness.jobs import register_job_kind, reset_job_kinds

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _fused_run(run_dir: Path, n: int = 60, k: int = 7, seed: int = 0) -> RunConfig:
    rng = np.random.default_rng(seed)
    config = RunConfig.model_validate({"attributes": {"enabled": True}})
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    labels = rng.integers(0, k, n)
    video = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[labels] * (rng.random(n) < 0.5)[:, None]
    attr = rng.normal(0, 0.3, (n, k)) + 0.8 * np.eye(k)[labels] * (rng.random(n) < 0.5)[:, None]
    write_cache(run_dir / "cache" / "val", video_ids=[f"v{i}" for i in range(n)], labels=labels,
                video_scores=video.astype(np.float32), attr_scores=attr.astype(np.float32),
                classes=[f"c{i}" for i in range(k)], split="val", config_hash=config.content_hash())
    return config


def test_lambda_curve_is_the_exact_top1_of_the_fused_cached_scores(tmp_path):
    from bike.engine.caches import load_score_cache
    from harness.figures import lambda_figure
    from harness.lambda_exact import LambdaCurve

    run_dir = tmp_path / "run"
    config = _fused_run(run_dir)
    png = lambda_figure(run_dir)
    assert png == run_dir / "figures" / "lambda.png" and png.read_bytes()[:4] == b"\x89PNG"
    data = json.loads((run_dir / "figures" / "lambda.json").read_text())
    curve = LambdaCurve(np.array(data["breakpoints"]), np.array(data["values"]), np.array(data["point_values"]))
    cache = load_score_cache(run_dir, "val")
    for lam in np.random.default_rng(1).random(40).tolist() + [0.0, 1.0, config.fusion_lambda]:
        fused = fuse(cache.video_scores, cache.attr_scores, lam, config.fusion.transform, kind_v=cache.score_kind,
                     dtype=np.float64)
        direct = float(np.mean(fused.argmax(axis=1) == cache.labels))
        assert curve.at(lam)[0] == pytest.approx(direct, abs=1e-12), lam
    assert data["lambda"] == config.fusion_lambda and data["value_at_lambda"] == pytest.approx(curve.at(config.fusion_lambda)[0])


def test_no_lambda_curve_without_attribute_scores(tmp_path):
    from harness.figures import lambda_figure

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(RunConfig().to_yaml())
    write_cache(run_dir / "cache" / "val", video_ids=["a", "b"], labels=np.array([0, 1]), video_scores=np.eye(2, dtype=np.float32),
                classes=["x", "y"], split="val", config_hash="h")
    assert lambda_figure(run_dir) is None and not (run_dir / "figures").exists()


def test_bars_put_ours_beside_the_paper(tmp_path):
    from harness.figures import table_bars
    from harness.registry import load_registry

    cells = [{"table": "6a", "row": "mean_pool", "column": "top1", "value": 47.7, "scale": "smoke", "run_id": "r1"}]
    out = table_bars(cells, tmp_path, ["6a", "6b"])
    assert out == [tmp_path / "6a.png"]  # 6b has no cell of ours: no picture
    data = json.loads((tmp_path / "6a.json").read_text())
    bar = next(b for b in data["bars"] if b["row"] == "mean_pool" and b["column"] == "top1")
    assert bar["ours"] == 47.7 and bar["paper"] == load_registry().value("6a", "mean_pool", "top1") and bar["run_id"] == "r1"
    assert all(b["ours"] is None for b in data["bars"] if b is not bar)


def test_table6_html_is_self_contained(tmp_path):
    from harness.figures import table_bars, write_table6_html

    run_dir = tmp_path / "runs" / "abc"
    _fused_run(run_dir)
    from harness.figures import lambda_figure

    lambda_figure(run_dir)
    cells = [{"table": "6a", "row": "mean_pool", "column": "top1", "value": 47.7, "scale": "smoke", "run_id": "abc"}]
    bars = table_bars(cells, tmp_path / "figures" / "table6", ["6a"])
    missing = [{"table": "6b", "row": "word_word", "column": "top1", "reason": "run is failed"}]
    path = write_table6_html(tmp_path, cells, missing, {str(run_dir): ["table6.bike"]}, "smoke", bars,
                             "Ablation directions: 1 of 2 reproduced", ["6a"])
    text = path.read_text()
    assert path == tmp_path / "table6.html"
    assert 'data-table="6a"' in text and "47.7" in text and "Ablation directions: 1 of 2" in text and "run is failed" in text
    assert "table6.bike" in text and text.count("data:image/png;base64,") == 2
    assert not re.search(r"\bhref\s*=", text, re.I)
    assert all(src.startswith("data:") for src in re.findall(r"\bsrc\s*=\s*\"([^\"]*)\"", text, re.I))
    assert "<link" not in text.lower() and "<script" not in text.lower()


# ---------------------------------------------------------------------------------- console
from tests.harness.test_cli import engine  # noqa: E402 - the stand-in engine of the CLI tests


@pytest.fixture
def spec_file(tmp_path):
    body = {"name": "talk", "family": "general",
            "dataset": {"name": "k400", "root": "/d", "val_list": "/d/val.txt", "class_file": "/d/c.csv"},
            "resources": {"full": {"timeout_min": 2}},
            "variants": {"z": {"set": {"model.frames": 2}, "cells": [{"table": "6a", "row": "vcs", "column": "top1", "metric": "video_top1"}]},
                         "a": {"stage": "attributes", "init_from": {"variant": "z"}}}}
    path = tmp_path / "talk.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_each_finished_run_says_k_of_n_time_and_metric_and_status_has_a_header(spec_file, tmp_path, capsys):
    register_job_kind("train", engine)
    try:
        results = tmp_path / "results"
        code = main(["run", str(spec_file), "--scale", "full", "--poll", "0.05", "--no-track", "--results", str(results)])
        out = capsys.readouterr().out
        assert code == 0, out
        frames_a = 2  # the stage-2 run keeps its stage-1 run's model
        assert "2 run(s) planned: 0 already done, 0 running elsewhere, 2 to run (local, 1 at a time)" in out
        assert re.search(r"^\[1/2\] talk\.z done in 2m03s: video_top1 2\.0 \(run [0-9a-f]{12}\)$", out, re.M), out
        from harness.executor import format_duration

        assert re.search(rf"^\[2/2\] talk\.a done in {format_duration(61.4 * frames_a)}: top1 {10.0 * frames_a:.1f} ", out, re.M), out
        assert main(["status", "--results", str(results)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["run", "state", "scale", "job", "time", "headline", "spec.variant"]
        assert [ln.split()[-1] for ln in lines[1:3]] == ["talk.z", "talk.a"]  # the spec's order, not the run ids'
    finally:
        reset_job_kinds()


def test_next_steps_name_the_report_mlflow_check_and_tune(tmp_path):
    from harness.drive import next_steps

    text = next_steps(tmp_path, None, tmp_path / "table6.html")
    assert str(tmp_path / "table6.html") in text and "make mlflow-ui" in text and f"sqlite:///{tmp_path}" in text
    assert "make check" in text and "make tune" in text
    assert "--no-track" in next_steps(tmp_path, None, None, track=False)


def test_preflight_lists_missing_files_and_refuses_local_tasks(spec_file, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", str(spec_file), "--scale", "full", "--results", str(results), "--no-track"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing was submitted" in err
    assert "missing file(s) the plan needs (2):" in err and "/d/c.csv  (read by 2 run(s))" in err
    assert "/d/val.txt  (read by 2 run(s))" in err
    assert not (results / "runs").exists()
    register_job_kind("train", engine)  # a stand-in engine reads no file, but its local tasks still start
    try:
        code = main(["run", str(spec_file), "--scale", "full", "--results", str(results), "--no-track", "--tasks-per-node", "4"])
    finally:
        reset_job_kinds()
    err = capsys.readouterr().err
    assert code == 2 and "resources.slurm.tasks_per_node: got 4 with the local executor" in err and "--executor slurm" in err
    assert not (results / "runs").exists()


def test_world_build_progress_lines_are_timestamped():
    from bike.world.progress import BuildProgress

    stream = io.StringIO()
    say = BuildProgress(stream)  # not a terminal: plain lines, the pretraining steps too
    say("stage 1/3: rendering and writing 66 videos")
    say("pretrain step 10/100 loss 2.345 (3s)")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.match(r"^\[\d\d:\d\d:\d\d \+0m0\ds\] world: stage 1/3: rendering", lines[0])
    assert lines[1].endswith("world: pretrain step 10/100 loss 2.345 (3s)")
