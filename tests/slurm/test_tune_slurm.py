"""`bikebench tune` with its workers as one job array on a real SLURM controller.

The study reads a tiny cached run (λ only, on the cached attribute scores: no text tower, no torch in
the tasks), so each task's work is a few Optuna trials and the test's time is SLURM's and Python's
start-up. The sweep names ``executor: slurm`` and leaves ``storage`` null: the study must go to the
journal file in its directory, the two workers must be the two tasks of ONE array, and every trial
of both must be kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.tuning import ProblemFactory, open_storage, tune_main
from tests.slurm.slurm_util import PROBE_TIMEOUT_S, wait_for_state

pytestmark = pytest.mark.slurm

N_VIDEOS, N_CLASSES, TRIALS_PER_WORKER = 80, 4, 3


def write_cached_run(root: Path, seed: int = 0) -> Path:
    """A run directory whose ``cache/tune/`` holds video and attribute scores (the engine's writer)."""
    from bike.config import RunConfig
    from bike.engine.caches import split_cache_dir, write_cache

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, N_VIDEOS)
    s_v = rng.normal(scale=0.5, size=(N_VIDEOS, N_CLASSES)).astype(np.float32)
    s_a = rng.normal(scale=0.5, size=(N_VIDEOS, N_CLASSES)).astype(np.float32)
    s_v[np.arange(N_VIDEOS), labels] += 0.5
    s_a[np.arange(N_VIDEOS), labels] += 0.4
    run = root / "run"
    run.mkdir(parents=True)
    cfg = RunConfig(stage="eval", model={"backbone": "bike-micro", "pretrained": None, "frames": 2, "resolution": 32},
                    eval={"split": "val"})
    (run / "config.yaml").write_text(cfg.to_yaml())
    write_cache(split_cache_dir(run, "tune"), video_ids=[f"v{i}" for i in range(N_VIDEOS)], labels=labels,
                video_scores=s_v, classes=[f"c{c}" for c in range(N_CLASSES)], split="tune", config_hash="test",
                attr_scores=s_a)
    return run


@pytest.mark.timeout(120)
def test_two_study_workers_run_as_one_slurm_array_and_lose_no_trial(slurm_cluster, job_dir: Path, capsys) -> None:
    study = f"slurm_tune_{uuid.uuid4().hex[:8]}"
    slurm: dict = {"cpus_per_task": 1}
    if os.environ.get("BIKEBENCH_SLURM_PARTITION"):
        slurm["partition"] = os.environ["BIKEBENCH_SLURM_PARTITION"]
    if os.environ.get("BIKEBENCH_SLURM_ACCOUNT"):
        slurm["account"] = os.environ["BIKEBENCH_SLURM_ACCOUNT"]
    sweep = job_dir / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "study": study, "source_run": str(write_cached_run(job_dir)), "n_trials": TRIALS_PER_WORKER, "workers": 2,
        "executor": "slurm", "results_dir": str(job_dir / "results"),
        "resources": {"timeout_min": 5, "slurm": slurm},
        "space": {"k": None, "lam": {"low": 0.0, "high": 1.0}},
    }))
    def cancel_leftovers() -> None:  # a failed test leaves nothing queued
        if shutil.which("scancel"):
            subprocess.run(["scancel", "--name", f"tune-{study}"], capture_output=True, timeout=PROBE_TIMEOUT_S)

    try:
        rc = tune_main(sweep, [], None, poll_s=0.5)
    except BaseException:
        cancel_leftovers()  # not after a normal return: the tasks may still be exiting (COMPLETED, not CANCELLED)
        raise
    captured = capsys.readouterr()
    if rc != 0:
        cancel_leftovers()
    assert rc == 0, captured.out + captured.err
    study_dir = job_dir / "results" / "studies" / study
    best = json.loads((study_dir / "best.json").read_text())
    # SLURM + the default storage: the journal file of the study directory
    assert best["storage"] == f"journal:{(study_dir / 'journal.log').resolve()}"
    assert best["n_complete"] == 2 * TRIALS_PER_WORKER
    assert best["worker_array"]["executor"] == "slurm"
    assert best["worker_array"]["trials_per_worker"] == [TRIALS_PER_WORKER, TRIALS_PER_WORKER]
    import optuna

    trials = optuna.load_study(study_name=study, storage=open_storage(best["storage"])).trials
    assert len(trials) == 2 * TRIALS_PER_WORKER and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # one array: task folders <A>_0 and <A>_1 of one invocation folder, both COMPLETED in sacct
    (invocation,) = list((study_dir / "submitit").iterdir())
    tasks = sorted(d.name for d in invocation.iterdir() if d.is_dir() and "_" in d.name)  # (<A>/ holds the batch script)
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, tasks
    assert sorted(t.split("_")[1] for t in tasks) == ["0", "1"]
    for task in tasks:
        wait_for_state(task, "COMPLETED", 60)
        assert f"study {study} worker {task.split('_')[1]}:" in (invocation / task / f"{task}_0_log.out").read_text()


@dataclass
class BrokenOnNodes(ProblemFactory):
    """A problem factory that works in the submitting process and raises in every SLURM task."""

    parent_pid: int = 0

    def __call__(self):
        if os.getpid() != self.parent_pid:
            raise RuntimeError("caches unreadable on the compute node (injected failure)")
        return super().__call__()


@pytest.mark.timeout(120)
def test_a_failed_slurm_task_names_the_task_and_its_log(slurm_cluster, job_dir: Path) -> None:
    import sys

    import cloudpickle

    from harness.spec import ResourceSpec
    from harness.tuning import StudyWorkerError, load_sweep_spec, run_study

    study = f"slurm_tune_fail_{uuid.uuid4().hex[:8]}"
    sweep = job_dir / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"study": study, "source_run": str(write_cached_run(job_dir)), "n_trials": 2,
                                     "workers": 2, "results_dir": str(job_dir / "results"),
                                     "space": {"k": None, "lam": {"low": 0.0, "high": 1.0}}}))
    spec = load_sweep_spec(sweep)
    slurm = {k: os.environ[v] for k, v in (("partition", "BIKEBENCH_SLURM_PARTITION"), ("account", "BIKEBENCH_SLURM_ACCOUNT"))
             if os.environ.get(v)}
    factory = BrokenOnNodes(spec, spec.source_run, parent_pid=os.getpid())
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # the node cannot import tests/
    def cancel_leftovers() -> None:
        if shutil.which("scancel"):
            subprocess.run(["scancel", "--name", f"tune-{study}"], capture_output=True, timeout=PROBE_TIMEOUT_S)

    try:
        with pytest.raises(StudyWorkerError) as info:
            run_study(spec, factory, executor="slurm", poll_s=0.5, log=lambda m: None,
                      resources=ResourceSpec(timeout_min=5, slurm={"cpus_per_task": 1, **slurm}))
    except BaseException:
        cancel_leftovers()  # only when the test already failed: a cancel racing the tasks' own exit
        raise               # would turn them CANCELLED instead of FAILED
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    message = str(info.value)
    assert f"study {study}: 2 of 2 worker task(s) of the slurm job array failed" in message
    for task in (0, 1):
        line = next(ln for ln in message.splitlines() if ln.startswith(f"  array task {task} "))
        assert line.endswith("RuntimeError: caches unreadable on the compute node (injected failure)"), message
        job_id = line.split("(job ")[1].split(")")[0]
        assert job_id.endswith(f"_{task}")
        log = Path(message.split(line, 1)[1].splitlines()[1].split("log: ", 1)[1])
        assert log.is_file() and "injected failure" in log.read_text()
        try:  # the result pickle (what the harness reads) comes before the task's exit reaches sacct
            wait_for_state(job_id, "FAILED", 60)
        except BaseException:
            cancel_leftovers()
            raise
    assert not (job_dir / "results" / "studies" / study / "best.json").exists()
