"""Run directories: atomic writes, state, submissions, result reading."""

from __future__ import annotations

import json

import pytest

from bike.config import RunConfig
from harness.rundir import RunDir, atomic_write_json, atomic_write_text, list_run_dirs, runs_root


def _config(**model) -> RunConfig:
    return RunConfig.model_validate({"name": "a", "model": model})


def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "x.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write_text(target, Boom())  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_prepare_writes_config_meta_and_pending_state(tmp_path):
    cfg = _config()
    rd = RunDir.for_run(tmp_path, cfg.content_hash())
    rd.prepare(cfg.to_yaml(), {"requested_by": [{"spec": "s", "variant": "a", "scale": "smoke"}], "code": {"commit": "abc"}})
    assert rd.path == runs_root(tmp_path) / cfg.content_hash()
    assert RunConfig.from_yaml(rd.config_path) == cfg
    assert rd.state() == "pending"
    # a second request (another variant with the same config, another name) accumulates
    other = RunConfig.model_validate({**cfg.model_dump(), "name": "b"})
    rd.prepare(other.to_yaml(), {"requested_by": [{"spec": "s", "variant": "b", "scale": "smoke"}]})
    meta = rd.read_meta()
    assert [r["variant"] for r in meta["requested_by"]] == ["a", "b"]
    assert meta["code"] == {"commit": "abc"}
    assert [d.run_id for d in list_run_dirs(tmp_path)] == [cfg.content_hash()]
    rd.prepare(cfg.to_yaml(), {"code": {"commit": "def"}})
    assert rd.read_meta()["code"] == {"commit": "def"}  # a resubmission records the code it runs
    atomic_write_json(rd.result_path, {"status": "done"})
    rd.prepare(cfg.to_yaml(), {"code": {"commit": "ghi"}})
    assert rd.read_meta()["code"] == {"commit": "def"}  # a finished run keeps the code that produced it


def test_prepare_refuses_a_different_config_under_the_same_id(tmp_path):
    cfg = _config()
    rd = RunDir.for_run(tmp_path, cfg.content_hash())
    rd.prepare(cfg.to_yaml(), {})
    with pytest.raises(RuntimeError, match="differs from the configuration"):
        rd.prepare(_config(frames=4).to_yaml(), {})


def test_states_history_and_attempts(tmp_path):
    rd = RunDir(tmp_path / "r")
    rd.prepare(_config().to_yaml(), {})
    rd.record_submission("local", "123", tmp_path / "sub")
    assert rd.state() == "queued"
    rd.write_state("running", job_id="123")
    rd.write_state("requeued", job_id="123", reason="timeout")
    rd.write_state("running", job_id="123")
    st = rd.read_state()
    assert st["attempts"] == 2
    assert [h["state"] for h in st["history"]] == ["pending", "running", "requeued", "running"]
    assert "reason" not in st  # reasons belong to the state that gave them
    with pytest.raises(ValueError, match="not one of"):
        rd.write_state("finished")


def test_done_comes_from_result_json(tmp_path):
    rd = RunDir(tmp_path / "r")
    rd.prepare(_config().to_yaml(), {})
    rd.write_state("done")
    assert rd.state() == "failed"  # state file alone does not make a run done
    atomic_write_json(rd.result_path, {"status": "running"})
    assert not rd.is_done()
    atomic_write_json(rd.result_path, {"status": "done", "video_top1": 12.5})
    assert rd.is_done() and rd.state() == "done"


def test_metrics_skip_a_torn_last_line(tmp_path):
    rd = RunDir(tmp_path / "r")
    rd.path.mkdir(parents=True)
    rd.metrics_path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [m["step"] for m in rd.metrics()] == [1, 2]
