"""One run per run id, whatever runs at the same time: two ``bikebench run`` drivers, or two
``bikebench sync``, started together in separate processes, again and again; then count run
directories, jobs, metrics.jsonl lines, MLflow runs (parents and children) and metric rows.

Every process waits for a "go" file that the test writes once all of them are ready, so they really
start together. The job is a stand-in engine (:func:`engine`, a few steps of ``metrics.jsonl``, then
``result.json``) run by real submitit local jobs; MLflow is a SQLite file in ``tmp_path``, new for
every trial, so the two processes also race to create its schema.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from harness.mlflow_runs import TAG_PARENT_KEY, TAG_PARENT_RUN, TAG_RUN_ID
from harness.rundir import RunDir, list_run_dirs
from harness.tracking import Tracker, default_tracking_uri, sync
from tests.harness.test_tracking import finish, make_run

REPO = Path(__file__).resolve().parents[2]
TRIALS = 4
STEPS = 3
VARIANTS = {"a": {"set": {"model.frames": 2}}, "b": {"set": {"model.frames": 4}}}
#: MLflow metric rows one finished run gives: one ``loss`` a metrics line and its headline ``val/video_top1``
#: (the other numbers of result.json, e.g. ``steps``, stay there).
ROWS_PER_RUN = STEPS + 1


def engine(config, run_dir) -> dict:
    """The job: ``STEPS`` metrics lines (slow enough for the two drivers to overlap), then the result."""
    run_dir = Path(run_dir)
    with open(run_dir / "calls.log", "a") as log:
        log.write(f"start {os.getpid()}\n")
    for step in range(1, STEPS + 1):
        time.sleep(0.2)
        with open(run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
    result = {"status": "done", "split": "val", "metrics": {"video_top1": 40.0 + config.model.frames}, "steps": STEPS}
    (run_dir / "result.json").write_text(json.dumps(result))
    return result


# ------------------------------------------------------------------------------------ the processes
def child_main(argv: list[str]) -> int:
    """One process of a trial: ``run|sync READY GO RESULTS URI [SPEC]``; waits for GO, then drives or syncs."""
    kind, ready, go, results, uri = argv[:5]
    Path(ready).touch()
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.002)
    if kind == "sync":
        from harness.cli import main

        return main(["sync", "--results", results, "--tracking-uri", uri])
    from harness.drive import run_specs
    from harness.spec import load_spec

    drive = run_specs([load_spec(argv[5])], scale="full", cluster="local", results=results, tracking_uri=uri,
                      job_targets={"train": f"{__name__}:engine"}, poll_s=0.05)
    return 0 if drive.ok and drive.tracking_error is None else 1


def start_together(trial: Path, kind: str, results: Path, uri: str, *extra: str, n: int = 2) -> list[subprocess.CompletedProcess]:
    """Start ``n`` processes of ``kind``, let them go at once, wait for them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    go = trial / "go"
    procs, readies = [], []
    for i in range(n):
        ready = trial / f"ready{i}"
        readies.append(ready)
        code = f"import sys; from {__name__} import child_main; sys.exit(child_main(sys.argv[1:]))"
        procs.append(subprocess.Popen(
            [sys.executable, "-c", code, kind, str(ready), str(go), str(results), uri, *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    done = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out))
    return done


# ------------------------------------------------------------------------------------ counting
def mlflow_counts(db: Path) -> dict[str, dict]:
    """Active MLflow runs of the SQLite store: children per (experiment, run id), parents per key,
    metric rows per run id."""
    con = sqlite3.connect(db)
    try:
        def per(key: str) -> dict:
            rows = con.execute(
                "SELECT r.experiment_id, t.value, count(*) FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
                "WHERE t.key = ? AND r.lifecycle_stage = 'active' GROUP BY r.experiment_id, t.value", (key,)).fetchall()
            return {(str(e), v): c for e, v, c in rows}

        metric_rows = dict(con.execute(
            "SELECT t.value, count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? WHERE r.lifecycle_stage = 'active' "
            "GROUP BY t.value", (TAG_RUN_ID,)).fetchall())
        return {"children": per(TAG_RUN_ID), "parents": per(TAG_PARENT_KEY), "metric_rows": metric_rows}
    finally:
        con.close()


def write_spec(path: Path) -> Path:
    body = {"name": "concurrent", "family": "general",
            "dataset": {"name": "k400", "root": "/d", "val_list": "/d/val.txt", "class_file": "/d/c.csv"},
            "variants": VARIANTS, "resources": {"full": {"timeout_min": 2}}}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ the tests
def test_two_drivers_started_together_run_each_run_once(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    for index in range(TRIALS):
        trial = tmp_path / f"trial{index}"
        trial.mkdir()
        results = trial / "results"
        uri = default_tracking_uri(results)
        procs = start_together(trial, "run", results, uri, str(spec))
        for proc in procs:
            assert proc.returncode == 0, f"trial {index}: {proc.stdout}"
            assert "Traceback" not in proc.stdout, f"trial {index}: {proc.stdout}"

        dirs = list_run_dirs(results)
        assert len(dirs) == len(VARIANTS), f"trial {index}"
        for rd in dirs:
            assert len(rd.submissions()) == 1, f"trial {index}: {rd.run_id} submitted {rd.submissions()}"
            starts = (rd.path / "calls.log").read_text().splitlines()
            assert len(starts) == 1, f"trial {index}: {rd.run_id} ran {starts}"
            assert len(list(rd.metrics())) == STEPS, f"trial {index}: {rd.run_id}"
            assert rd.state() == "done"
        counts = mlflow_counts(results / "mlflow.db")
        assert sorted(v for _, v in counts["children"]) == sorted(rd.run_id for rd in dirs), f"trial {index}: {counts}"
        assert set(counts["children"].values()) == {1}, f"trial {index}: {counts}"
        assert list(counts["parents"].values()) == [1], f"trial {index}: {counts}"
        assert counts["metric_rows"] == {rd.run_id: ROWS_PER_RUN for rd in dirs}, f"trial {index}: {counts}"
        # one of the two waited for the other and found both runs done
        assert sum("skipped" in p.stdout or "2 unchanged" in p.stdout for p in procs) >= 1


def test_two_syncs_started_together_log_each_run_once(tmp_path):
    for index in range(TRIALS):
        trial = tmp_path / f"trial{index}"
        trial.mkdir()
        results = trial / "results"
        runs = [make_run(results, "exp_concurrent", f"v{i}", lines=STEPS, frames=i + 1) for i in range(3)]
        runs.append(make_run(results, "exp_other", "w", lines=STEPS, frames=9))
        for rd in runs[:2]:
            finish(rd, video_top1=50.0)
        uri = default_tracking_uri(results)  # a new SQLite file: both create its schema at once
        procs = start_together(trial, "sync", results, uri)
        for proc in procs:
            assert proc.returncode == 0 and "Traceback" not in proc.stdout, f"trial {index}: {proc.stdout}"
        counts = mlflow_counts(results / "mlflow.db")
        assert sorted(v for _, v in counts["children"]) == sorted(rd.run_id for rd in runs), f"trial {index}: {counts}"
        assert set(counts["children"].values()) == {1}, f"trial {index}: {counts}"
        assert sorted(k for _, k in counts["parents"]) == ["exp_concurrent:smoke", "exp_other:smoke"]
        assert set(counts["parents"].values()) == {1}, f"trial {index}: {counts}"
        # STEPS lines of loss and top@1; a finished run adds its headline val/video_top1 (counts stay in result.json)
        expected = {rd.run_id: 2 * STEPS + (1 if rd.is_done() else 0) for rd in runs}
        assert counts["metric_rows"] == expected, f"trial {index}: {counts}"
        again = sync(results, uri)
        assert again.created == [] and again.updated == [] and again.merged == []


def test_sync_merges_duplicate_runs_into_the_oldest(tmp_path):
    results = tmp_path / "results"
    uri = default_tracking_uri(results)
    a = make_run(results, "exp_dup", "a", lines=STEPS, frames=2)
    b = make_run(results, "exp_dup", "b", lines=STEPS, frames=4)
    finish(a, video_top1=50.0)
    assert sorted(sync(results, uri).created) == sorted([a.run_id, b.run_id])
    # what two writers without the lock left behind: a second parent, and a second child of `a`
    # (under the second parent) holding part of its metrics
    tracker = Tracker(results, uri)
    exp = tracker.experiment_id("exp_dup")
    first_parent = tracker.parent_run("exp_dup", "smoke")
    time.sleep(0.01)
    parent2 = tracker.client.create_run(exp, tags={TAG_PARENT_KEY: "exp_dup:smoke"}).info.run_id
    dup = tracker.client.create_run(exp, tags={TAG_RUN_ID: a.run_id, TAG_PARENT_RUN: parent2}).info.run_id
    from mlflow.entities import Metric

    tracker.client.log_batch(dup, metrics=[Metric("loss", 1.0, 0, 1)])
    counts = mlflow_counts(results / "mlflow.db")
    assert counts["children"][(exp, a.run_id)] == 2 and counts["parents"][(exp, "exp_dup:smoke")] == 2

    report = sync(results, uri)
    assert sorted(report.merged) == sorted([a.run_id, "parent exp_dup:smoke"])
    counts = mlflow_counts(results / "mlflow.db")
    assert counts["children"] == {(exp, a.run_id): 1, (exp, b.run_id): 1}
    assert counts["parents"] == {(exp, "exp_dup:smoke"): 1}
    assert counts["metric_rows"] == {a.run_id: 2 * STEPS + 1, b.run_id: 2 * STEPS}
    fresh = Tracker(results, uri)
    assert fresh.parent_run("exp_dup", "smoke") == first_parent
    kept = fresh.children(exp)
    assert {r.data.tags[TAG_PARENT_RUN] for r in kept.values()} == {first_parent}
    assert sync(results, uri).merged == []
    assert isinstance(RunDir(a.path).result(), dict)
