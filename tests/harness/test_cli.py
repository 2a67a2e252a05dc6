"""The ``bikebench`` command line: run (dry and real), status, sync, errors, delegation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cloudpickle
import pytest
import yaml

from harness.cli import main
from harness.jobs import register_job_kind, reset_job_kinds
from harness.tracking import default_tracking_uri

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def engine(config, run_dir):
    """Stand-in for bike.train.run: writes result.json with a metric under "metrics"."""
    result = {"status": "done", "run_id": config.content_hash(), "elapsed_s": 61.4 * config.model.frames,
              "metrics": {"video_top1": float(config.model.frames), "top1": 10.0 * config.model.frames}}
    (Path(run_dir) / "result.json").write_text(json.dumps(result))
    return result


@pytest.fixture
def spec_file(tmp_path):
    body = {"name": "clidemo", "family": "general",
            "dataset": {"name": "k400", "root": "/d", "val_list": "/d/val.txt", "class_file": "/d/c.csv"},
            "resources": {"full": {"timeout_min": 2}},
            "variants": {"a": {"set": {"model.frames": 2}, "cells": [{"table": "6a", "row": "vcs", "column": "top1", "metric": "video_top1"}]},
                         "b": {"stage": "attributes", "init_from": {"variant": "a"}}}}
    path = tmp_path / "clidemo.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture
def fake_engine_kinds():
    register_job_kind("train", engine)
    yield
    reset_job_kinds()


def test_dry_run_prints_the_plan_and_writes_nothing(spec_file, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", str(spec_file), "--scale", "full", "--executor", "slurm", "--dry-run", "--results", str(results),
                 "--partition", "gpu", "--sbatch", "reservation=r1", "train.epochs=3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "wave 0" in out and "wave 1" in out and "'partition': 'gpu'" in out and "'reservation': 'r1'" in out
    assert "afterok" in out and "clidemo.a" in out and "clidemo.b" in out
    assert not results.exists() or not (results / "runs").exists()


def test_invalid_spec_exits_2_naming_file_field_and_value(spec_file, tmp_path, capsys):
    code = main(["run", str(spec_file), "--scale", "full", "--dry-run", "--results", str(tmp_path), "model.interaction=avg"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.interaction: got 'avg'" in err and "'mean'" in err and str(spec_file) in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfamily: general\nvariants: {a: {set: {model.frames: zero}}}\n")
    assert main(["run", str(bad), "--dry-run", "--scale", "full", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "variants.a.set.model.frames: got 'zero'" in err


def test_executor_must_be_named_from_the_choices(spec_file):
    with pytest.raises(SystemExit):
        main(["run", str(spec_file), "--executor", "auto"])


def _plan(spec_file, results):
    from harness.expand import expand
    from harness.spec import load_spec

    return expand(load_spec(spec_file), "full", results)


def test_status_durations():
    from harness.executor import format_duration as _duration

    assert [_duration(x) for x in (None, 14.2, 185, 7380, -1)] == ["", "14s", "3m05s", "2h03m", ""]


def test_status_headline_is_top1_for_single_label_and_map_for_multi_label():
    from harness.cli import _headline

    # a single-label result carries ActivityNet's mAP beside top-1 (bike.engine.eval_loop.protocol_metrics)
    single = {"metrics": {"mAP": 0.25, "top1": 12.5, "top5": 40.0, "video_mAP": 0.25}}
    multi = {"metrics": {"mAP": 31.4, "video_mAP": 31.4, "mAP_official_running": 30.9}}
    zero_shot = {"metrics": {"top1": 50.0, "zs_half_mean": 48.25}}
    assert [_headline(r) for r in (single, multi, zero_shot)] == ["top1 12.50", "mAP 31.40", "zs_half_mean 48.25"]


def test_run_status_and_sync(spec_file, tmp_path, capsys, fake_engine_kinds):
    results = tmp_path / "results"
    common = ["--results", str(results)]
    assert main(["status", str(spec_file), "--scale", "full", *common]) == 0
    assert capsys.readouterr().out.count("pending") >= 2
    code = main(["run", str(spec_file), "--scale", "full", "--executor", "local", "--parallelism", "2", "--poll", "0.1",
                 "--no-track", *common])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "6a/vcs/top1: 2.00" in out
    assert main(["status", *common]) == 0
    out = capsys.readouterr().out
    assert out.count(" done ") == 2 and "clidemo.a" in out and "local:" in out and "2 done" in out
    rows = {line.split()[-1]: line for line in out.splitlines() if " done " in line}
    frames = {v: yaml.safe_load((Path(r.run_dir) / "config.yaml").read_text())["model"]["frames"]
              for v, r in ((r.requested_by[0][1], r) for r in _plan(spec_file, results).runs)}
    for variant, n in frames.items():  # elapsed and the headline metric of each finished run
        from harness.executor import format_duration as _duration

        assert f"{_duration(61.4 * n)}  top1 {10.0 * n:.2f}" in rows[f"clidemo.{variant}"]
    uri = default_tracking_uri(results)
    assert main(["sync", *common]) == 0
    assert "2 created" in capsys.readouterr().out
    assert main(["sync", *common]) == 0
    assert "0 created" in capsys.readouterr().out
    assert main(["mlflow-uri", *common]) == 0
    assert capsys.readouterr().out.strip() == uri


@pytest.mark.parametrize("backbone_step", [0, 1250])
def test_world_build_calls_bike_world(monkeypatch, tmp_path, capsys, backbone_step):
    import bike.world

    seen = {}

    def build_world(root, size="default", seed=0, force=False):
        seen.update(root=root, size=size, seed=seed)
        identity = {"size": size, "seed": seed, "config_hash": "h", "checkpoint_sha256": "0" * 64}
        backbone = root / "clip-step.pt" if backbone_step else None
        if backbone_step:
            identity["backbone_checkpoint_sha256"] = "1" * 64
        return type("Info", (), {"checkpoint": root / "clip.pt", "identity": identity, "backbone_checkpoint": backbone,
                                 "config": {"backbone_step": backbone_step}})()

    monkeypatch.setattr(bike.world, "build_world", build_world, raising=False)
    assert main(["world", "build", "--size", "test", "--root", str(tmp_path / "w"), "--seed", "3"]) == 0
    assert seen == {"root": (tmp_path / "w").resolve(), "size": "test", "seed": 3}
    out = capsys.readouterr().out
    assert "clip.pt" in out
    # a world whose backbone is a pretraining snapshot names it, with its step and hash
    assert ("clip-step.pt (step 1250 of the pretraining; sha256 111111111111)" in out) == bool(backbone_step)


def test_check_delegates_to_harness_check(tmp_path, capsys):
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"table": "6a", "row": "mean_pool", "column": "top1", "value": 76.8, "scale": "full"}]))
    code = main(["check", "--results", str(res), "--against", "paper", "--allow-missing"])
    out = capsys.readouterr().out
    assert code == 0 and "6a" in out


def test_table6_dry_run_at_full_scale(tmp_path, capsys):
    assert main(["table6", "--scale", "full", "--executor", "slurm", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count(" dry-run ") == 23 and "table6.bike" in out and "table6.l14_multiview" in out
    assert "'gpus_per_node': 8" in out and "afterok" in out


def test_status_at_smoke_scale_does_not_build_the_world(spec_file, tmp_path, capsys):
    code = main(["status", str(spec_file), "--scale", "smoke", "--results", str(tmp_path), "--world-root", str(tmp_path / "none")])
    assert code == 2 and "not built" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
