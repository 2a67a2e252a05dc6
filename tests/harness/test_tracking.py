"""MLflow replay from run directories: one child per run, appended metrics, parents, sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bike.config import RunConfig
from harness.rundir import RunDir, atomic_write_json
from harness.tracking import (
    MAX_PARAM_VALUE,
    TAG_RUN_ID,
    Tracker,
    config_params,
    default_tracking_uri,
    metric_name,
    resolve_tracking_uri,
    sync,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds); tests use their own experiments."""
    root = tmp_path_factory.mktemp("mlflow")
    return root, default_tracking_uri(root)


def make_run(results: Path, spec: str, variant: str, scale: str = "smoke", lines: int = 2, **model) -> RunDir:
    cfg = RunConfig.model_validate({"name": f"{spec}.{variant}", "model": model})
    rd = RunDir.for_run(results, cfg.content_hash())
    rd.prepare(cfg.to_yaml(), {"requested_by": [{"spec": spec, "variant": variant, "scale": scale}],
                               "code": {"commit": "a" * 40, "dirty": True}, "scale": scale})
    for step in range(1, lines + 1):
        append_metrics(rd, {"step": step, "loss": 1.0 / step, "top@1": 10.0 * step})
    rd.record_submission("slurm", "4242", results / "submitit")
    rd.write_state("running", job_id="4242")
    return rd


def append_metrics(rd: RunDir, row: dict) -> None:
    with open(rd.metrics_path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def finish(rd: RunDir, **metrics) -> None:
    """A result.json as the engine writes it: the reported split's metrics, and counts."""
    atomic_write_json(rd.result_path, {"status": "done", "counts": {"evaluated": 10, "skipped": 0}, "split": "val",
                                       "metrics": metrics})
    rd.write_state("done")


def children(tracker: Tracker, spec: str, run_id: str):
    exp = tracker.client.get_experiment_by_name(spec)
    return tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` = '{run_id}'")


def test_tracking_uri_defaults_to_an_absolute_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = default_tracking_uri("rel/results")
    assert uri.startswith("sqlite:////") and uri.endswith("/rel/results/mlflow.db")
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri("sqlite:////x.db", tmp_path) == "sqlite:////x.db"


def test_params_and_metric_names_fit_mlflow():
    params = config_params({"model": {"prompt": "x" * (MAX_PARAM_VALUE + 50), "frames": 8}, "train": {"betas": [0.9, 0.99]}})
    assert len(params["model.prompt"]) == MAX_PARAM_VALUE
    assert params["model.frames"] == "8" and params["train.betas"] == "[0.9, 0.99]"
    assert metric_name("top@1") == "top_1" and metric_name("val/top1 (x)") == "val/top1 _x_"


def test_child_run_is_created_once_and_updated_incrementally(store, tmp_path):
    results, uri = tmp_path, store[1]
    rd = make_run(results, "exp_incremental", "bike", prompt="p" * 7000)
    tracker = Tracker(results, uri)
    assert tracker.log_run_dir(rd, "exp_incremental", "bike", "smoke") == "created"
    found = children(tracker, "exp_incremental", rd.run_id)
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "RUNNING"
    tags = run.data.tags
    assert tags["bikebench.scale"] == "smoke" and tags["bikebench.views"] == "1x1" and tags["bikebench.protocol"] == "closed"
    assert tags["mlflow.source.git.commit"] == "a" * 40 and tags["bikebench.git_dirty"] == "True"
    assert tags["bikebench.job_id"] == "4242" and tags["bikebench.cluster"] == "slurm"
    assert len(run.data.params["model.prompt"]) == MAX_PARAM_VALUE
    assert [m.value for m in tracker.client.get_metric_history(run.info.run_id, "top_1")] == [10.0, 20.0]

    # the job goes on, then finishes: a new tracker (a new driver) appends only what is new
    append_metrics(rd, {"step": 3, "loss": 0.3, "top@1": 30.0})
    finish(rd, video_top1=55.5, fused_top1=60.25)
    tracker2 = Tracker(results, uri)
    assert tracker2.log_run_dir(rd, "exp_incremental", "bike", "smoke") == "updated"
    assert tracker2.log_run_dir(rd, "exp_incremental", "bike", "smoke") == "unchanged"
    found = children(tracker2, "exp_incremental", rd.run_id)
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED"
    assert [m.step for m in tracker2.client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    # the headline once, at step 0, named by split and branch; counts stay in result.json
    assert run.data.metrics["val/video_top1"] == 55.5 and run.data.metrics["val/fused_top1"] == 60.25
    assert not any(k.startswith("counts") for k in run.data.metrics)
    assert [(m.step, m.value) for m in tracker2.client.get_metric_history(run.info.run_id, "val/video_top1")] == [(0, 55.5)]
    artifacts = {a.path for a in tracker2.client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "meta.json", "result.json"} <= artifacts
    parent = tracker2.parent_run("exp_incremental", "smoke")
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert Tracker(results, uri).parent_run("exp_incremental", "smoke") == parent  # reused, found by tag
    assert Tracker(results, uri).parent_run("exp_incremental", "full") != parent


def test_sync_replays_run_dirs_that_mlflow_lacks(store, tmp_path):
    results, uri = tmp_path, store[1]
    a = make_run(results, "exp_sync_a", "v1", frames=4)
    b = make_run(results, "exp_sync_a", "v2", frames=2)
    finish(b, video_top1=12.0)
    meta = b.read_meta()  # b is also requested by a second spec: it is logged under both experiments
    b.prepare(b.config_path.read_text(), {**meta, "requested_by": [{"spec": "exp_sync_b", "variant": "w", "scale": "smoke"}]})
    report = sync(results, uri)  # MLflow "was down" while they ran: everything is created now
    assert sorted(report.created) == sorted([a.run_id, b.run_id, b.run_id])
    report2 = sync(results, uri)
    assert report2.created == [] and report2.updated == []
    tracker = Tracker(results, uri)
    assert len(children(tracker, "exp_sync_a", b.run_id)) == 1
    assert len(children(tracker, "exp_sync_b", b.run_id)) == 1
    assert children(tracker, "exp_sync_a", a.run_id)[0].info.status == "RUNNING"
    finish(a, video_top1=20.0)
    report3 = sync(results, uri)
    assert report3.updated == [a.run_id] and report3.created == []
    assert children(tracker, "exp_sync_a", a.run_id)[0].info.status == "FINISHED"


def test_experiments_get_absolute_artifact_locations(store, tmp_path):
    tracker = Tracker(tmp_path, store[1])
    exp = tracker.client.get_experiment(tracker.experiment_id("exp_artifacts"))
    assert exp.artifact_location == (tmp_path.resolve() / "mlartifacts" / "exp_artifacts").as_uri()


# ------------------------------------------------------------------------------------ faults
def run_sync(results: Path, uri: str, capsys) -> tuple[int, str, str]:
    from harness.cli import main

    capsys.readouterr()
    rc = main(["sync", "--results", str(results), "--tracking-uri", uri])
    out, err = capsys.readouterr()
    return rc, out, "".join(line for line in err.splitlines(True) if " INFO mlflow." not in line)  # MLflow's own


def test_a_run_mlflow_rejects_is_reported_and_the_others_are_logged(tmp_path, capsys):
    results = tmp_path / "results"
    uri = default_tracking_uri(results)
    good = [make_run(results, "exp_good", f"v{i}", frames=i + 1) for i in range(2)]
    finish(good[0], video_top1=30.0)
    bad = make_run(results, "s" * 5000, "bike", frames=7)  # MLflow takes experiment names up to 500 characters
    rc, out, err = run_sync(results, uri, capsys)
    assert rc == 1
    assert "Traceback" not in out + err
    errors = err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: MLflow did not take run {bad.run_id} (ssss")
    assert len(errors[0]) < 400 and "maximum length of 500" in errors[0]
    assert "2 created" in out and "1 failed" in out
    tracker = Tracker(results, uri)
    for rd in good:
        assert len(children(tracker, "exp_good", rd.run_id)) == 1
    assert tracker.client.get_experiment_by_name("s" * 5000) is None


def test_an_unreachable_tracking_server_fails_fast_with_one_line(tmp_path, capsys):
    import socket
    import time

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = tmp_path / "results"
    make_run(results, "exp_down", "v")
    uri = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    rc, out, err = run_sync(results, uri, capsys)
    assert time.monotonic() - start < 30  # a hang guard: MLflow's own retries would take minutes
    assert rc == 1 and out == "" and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: MLflow tracking server {uri} is unreachable (Connection refused); "
        "the run directories are kept, run `bikebench sync` again later"]


@pytest.mark.slow  # two of MLflow's 20 s SQLite busy waits
def test_a_locked_sqlite_store_is_retried_then_reported(tmp_path, capsys, monkeypatch):
    import sqlite3
    import threading

    results = tmp_path / "results"
    uri = default_tracking_uri(results)
    first = make_run(results, "exp_locked", "a")
    assert sync(results, uri).created == [first.run_id]  # the store exists
    second = make_run(results, "exp_locked", "b", frames=3)
    holder = sqlite3.connect(results / "mlflow.db", isolation_level=None, check_same_thread=False)
    try:
        # another program keeps the file locked past MLflow's 20 s busy wait and our retries: reported
        monkeypatch.setenv("BIKEBENCH_MLFLOW_LOCK_RETRIES", "0")
        holder.execute("BEGIN EXCLUSIVE")
        rc, out, err = run_sync(results, uri, capsys)
        assert rc == 1 and out == "" and "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: MLflow store {uri} is locked by another program")
        holder.execute("ROLLBACK")
        # ... and released while sync waits: the retry logs the run
        monkeypatch.delenv("BIKEBENCH_MLFLOW_LOCK_RETRIES")
        released = threading.Event()

        def release():
            holder.execute("ROLLBACK")
            released.set()

        timer = threading.Timer(21.0, release)  # after MLflow's first 20 s busy wait has given up
        holder.execute("BEGIN EXCLUSIVE")
        timer.start()
        rc, out, err = run_sync(results, uri, capsys)
        timer.join()
        assert released.is_set()
        assert rc == 0 and "Traceback" not in out + err, err
        assert "1 created" in out
    finally:
        holder.close()
    assert len(children(Tracker(results, uri), "exp_locked", second.run_id)) == 1
