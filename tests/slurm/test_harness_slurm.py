"""The harness (`bikebench run … --executor slurm`, `bikebench status`, MLflow) on a real SLURM controller.

* A two-variant sweep of the real engine (`bike.train.run`, bike-micro on a few real mp4s) goes out as
  one job array, finishes, and lands in MLflow: one child run per run directory.
* Cancel and requeue go through the harness with a light job target (`slurm_jobs.SlowCounterTarget`,
  no torch import) that keeps the engine's checkpoint/resume contract, so that each test takes
  seconds, not minutes: the engine's own exact resume is tested in tests/bike/test_train.py.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main as bikebench
from harness.rundir import RunDir, list_run_dirs
from harness.spec import ResourceSpec
from tests.slurm.slurm_harness import drive, mlflow_runs_of, write_spec, write_tiny_dataset
from tests.slurm.slurm_jobs import SlowCounterTarget, checkpoint_step, read_starts, uninterrupted_result
from tests.slurm.slurm_util import (PROBE_TIMEOUT_S, SIGNAL_DELAY_S, TIME_LIMIT_MIN, TIMEOUT_STEPS, sacct_state,
                                    wait_for, wait_for_state)

pytestmark = pytest.mark.slurm

#: The repository root: a driver process runs ``python -m tests.slurm.slurm_harness`` from it.
REPO = Path(__file__).resolve().parents[2]
#: Seconds a driver process gets to exit after SIGTERM before it is killed.
DRIVER_EXIT_S = 10


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_tiny_dataset(tmp_path_factory.mktemp("slurm_tiny_data"))


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the module (its tables are created once); each test has its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('slurm_mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _cancel_leftovers(job_dir: Path):
    """After each test, cancel any job its run directories recorded (a failed test leaves nothing queued)."""
    yield
    ids = {str(sub["job_id"]).split("_")[0] for rd in list_run_dirs(job_dir / "results") for sub in rd.submissions()}
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=PROBE_TIMEOUT_S)


def _status(results: Path, capsys: pytest.CaptureFixture) -> dict[str, str]:
    """``bikebench status --results R`` → {run id: state}."""
    capsys.readouterr()
    assert bikebench(["status", "--results", str(results)]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 12:
            rows[parts[0]] = parts[1]
    return rows


def _logged(run, name: str) -> list[float]:
    """Values of the MLflow run's metrics called ``name``, whatever prefix the tracker gives them
    (``top1``, ``metrics.top1``, ``final/top1``)."""
    return [v for k, v in run.data.metrics.items() if k.replace("/", ".").split(".")[-1] == name]


def _only_run(results: Path) -> RunDir:
    dirs = list_run_dirs(results)
    assert len(dirs) == 1, [d.run_id for d in dirs]
    return dirs[0]


@pytest.mark.timeout(240)
def test_sweep_runs_as_one_job_array_and_lands_in_mlflow(slurm_cluster, job_dir: Path, tiny_data: dict,
                                                        tracking_uri: str, capsys) -> None:
    variants = {
        "mean": {"set": {"model.interaction": "mean"}, "cells": [{"table": "6a", "row": "mean_pool", "column": "top1", "metric": "top1"}]},
        "vcs": {"set": {"model.interaction": "vcs"}, "cells": [{"table": "6a", "row": "vcs", "column": "top1", "metric": "top1"}]},
    }
    spec = write_spec(job_dir / "sweep.yaml", "slurm_sweep", tiny_data, variants)
    results = job_dir / "results"

    rc = bikebench(["run", str(spec), "--scale", "full", "--executor", "slurm", "--results", str(results),
                    "--tracking-uri", tracking_uri, "--poll", "0.5"])
    out = capsys.readouterr().out
    assert rc == 0, out

    dirs = list_run_dirs(results)
    assert len(dirs) == 2
    job_ids = [rd.last_submission()["job_id"] for rd in dirs]
    assert len({j.split("_")[0] for j in job_ids}) == 1, f"not one array: {job_ids}"
    assert sorted(j.split("_")[1] for j in job_ids) == ["0", "1"]
    for rd in dirs:
        assert rd.state() == "done"
        assert rd.result()["steps"] >= 1 and 0 <= rd.result()["metrics"]["top1"] <= 100
        wait_for_state(rd.last_submission()["job_id"], "COMPLETED", 30)
        runs = mlflow_runs_of(tracking_uri, rd.run_id)
        assert len(runs) == 1
        assert runs[0].info.status == "FINISHED"
        assert pytest.approx(rd.result()["metrics"]["top1"]) in _logged(runs[0], "top1")
    assert set(_status(results, capsys).values()) == {"done"}


@pytest.mark.timeout(200)
def test_scancel_reads_cancelled_in_status_and_a_rerun_resumes(slurm_cluster, job_dir: Path, tiny_data: dict,
                                                               tracking_uri: str, capsys) -> None:
    # 15 steps of 1 s: after scancel the job still runs KillWait (5 s) before SIGKILL, and must not finish.
    steps, cancel_at = 15, 2
    spec = write_spec(job_dir / "cancel.yaml", "slurm_cancel", tiny_data, {"count": {}}, train={"max_steps": steps})
    results = job_dir / "results"
    # first driver in its own process, as a user's shell would run it
    driver = subprocess.Popen([sys.executable, "-m", "tests.slurm.slurm_harness", str(spec), str(results), tracking_uri,
                               "1.0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(list_run_dirs(results)) == 1 and _only_run(results).last_submission() is not None,
                 60, "the driver to submit the run")
        rd = _only_run(results)
        job_id = rd.last_submission()["job_id"]
        wait_for(lambda: checkpoint_step(rd.path, "checkpoints/latest.json") >= cancel_at, 60,
                 f"job {job_id} to reach step {cancel_at}")
        subprocess.run(["scancel", job_id], check=True, timeout=PROBE_TIMEOUT_S)
        wait_for_state(job_id, "CANCELLED", 30)
        assert _status(results, capsys) == {rd.run_id: "cancelled"}
    finally:
        driver.send_signal(signal.SIGTERM)   # the user gives up on this driver; the run stays cancelled
        try:
            driver.wait(DRIVER_EXIT_S)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
    assert not rd.is_done()

    outcome = drive(spec, results, tracking_uri, SlowCounterTarget(0.05))
    assert outcome.ok
    assert rd.state() == "done" and _status(results, capsys) == {rd.run_id: "done"}
    assert rd.result()["acc"] == uninterrupted_result(steps)
    starts = read_starts(rd.path)
    assert len(starts) == 2 and starts[0]["from_step"] == 0 and starts[1]["from_step"] >= cancel_at
    subs = rd.submissions()
    assert len(subs) == 2 and subs[0]["job_id"] != subs[1]["job_id"]
    assert len(mlflow_runs_of(tracking_uri, rd.run_id)) == 1


@pytest.mark.timeout(300)
def test_time_limit_requeue_resumes_and_leaves_one_mlflow_run(slurm_cluster, job_dir: Path, tiny_data: dict,
                                                               tracking_uri: str) -> None:
    # A real time limit (slurm_util.TIME_LIMIT_MIN): the USR2 warning comes 30-60 s in, before the 1-s steps
    # can finish; resumed steps take 0.05 s.
    steps, max_timeouts = TIMEOUT_STEPS, 3
    spec = write_spec(job_dir / "timeout.yaml", "slurm_timeout", tiny_data, {"count": {}}, train={"max_steps": steps})
    results = job_dir / "results"
    resources = ResourceSpec(timeout_min=TIME_LIMIT_MIN, signal_delay_s=SIGNAL_DELAY_S,
                             max_num_timeout=max_timeouts)

    outcome = drive(spec, results, tracking_uri, SlowCounterTarget(1.0, resumed_step_s=0.05), resources=resources)

    assert outcome.ok
    rd = _only_run(results)
    assert rd.state() == "done"
    assert rd.result()["acc"] == uninterrupted_result(steps)
    starts = read_starts(rd.path)
    assert 2 <= len(starts) <= 1 + max_timeouts, starts
    assert 0 < starts[1]["from_step"] < steps and starts[1]["step_s"] == 0.05
    history = [h["state"] for h in rd.read_state().get("history", [])]
    assert "requeued" in history, history
    assert len(rd.submissions()) == 1                      # requeued in place: one job id
    assert sacct_state(rd.last_submission()["job_id"]) in ("COMPLETED", "RUNNING", "COMPLETING")
    runs = mlflow_runs_of(tracking_uri, rd.run_id)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert uninterrupted_result(steps) in _logged(runs[0], "acc")


@pytest.mark.timeout(300)
@pytest.mark.distributed
def test_the_engine_as_a_two_task_job_trains_on_both_and_exits_cleanly(slurm_cluster, job_dir: Path, tiny_data: dict,
                                                                        tracking_uri: str, capsys) -> None:
    """The paper-scale shape (one task per GPU): `bikebench run --tasks-per-node 2` starts bike.train.run in
    two srun tasks that form one gloo group; both leave it when the run returns, so the job is COMPLETED
    (no abort at interpreter teardown) and its task logs hold no error."""
    variants = {"vcs": {"cells": [{"table": "6a", "row": "vcs", "column": "top1", "metric": "top1"}]}}
    spec = write_spec(job_dir / "two_tasks.yaml", "slurm_two_tasks", tiny_data, variants, train={"batch_size": 4})
    results = job_dir / "results"

    rc = bikebench(["run", str(spec), "--scale", "full", "--executor", "slurm", "--results", str(results),
                    "--tracking-uri", tracking_uri, "--poll", "0.5", "--tasks-per-node", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out

    rd = _only_run(results)
    assert rd.state() == "done"
    assert rd.result()["world_size"] == 2 and rd.result()["steps"] >= 1
    job_id = rd.last_submission()["job_id"]
    wait_for_state(job_id, "COMPLETED", 30)
    logs = sorted(results.rglob(f"{job_id}_*_log.err"))
    assert len(logs) == 2, logs  # one per task
    errs = "".join(p.read_text() for p in logs)
    assert "terminate called" not in errs and "Traceback" not in errs, errs
    assert len(mlflow_runs_of(tracking_uri, rd.run_id)) == 1
