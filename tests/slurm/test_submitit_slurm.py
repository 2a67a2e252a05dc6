"""submitit against a real SLURM controller: arrays, scancel, requeue, time-limit resume, srun tasks.

Every test builds `submitit.SlurmExecutor` explicitly (never AutoExecutor's guess) in a folder unique
to the test. Run with a cluster up (``make slurm-up``): ``python -m pytest -q tests/slurm``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from tests.slurm.slurm_jobs import (
    ResumableCounter,
    checkpoint_step,
    heartbeat,
    read_starts,
    square_plus,
    train_tiny_gathered,
    uninterrupted_result,
)
from tests.slurm.slurm_util import PROBE_TIMEOUT_S, SIGNAL_DELAY_S, TIME_LIMIT_MIN, TIMEOUT_STEPS, wait_for, wait_for_state

pytestmark = pytest.mark.slurm

#: SLURM's KillWait in the local cluster (scripts/slurm_up.sh): SIGKILL this long after SIGTERM.
KILL_WAIT_S = 5
#: Seconds sacct may lag behind the job's own result file.
SETTLE_S = 30


@pytest.mark.timeout(120)
def test_job_array_returns_every_result(slurm_executor, job_dir: Path) -> None:
    executor = slurm_executor(time=2, array_parallelism=4)
    xs = [0, 1, 2, 3]
    jobs = executor.map_array(square_plus, xs, [10] * len(xs))
    results = [job.result() for job in jobs]

    assert [r["value"] for r in results] == [x * x + 10 for x in xs]
    # one array job: a shared SLURM job id prefix, one task index per element, in order
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1
    assert [r["array_task"] for r in results] == [str(i) for i in range(len(xs))]
    for job in jobs:
        wait_for_state(job.job_id, "COMPLETED", SETTLE_S)


@pytest.mark.timeout(120)
def test_scancel_shows_cancelled_in_sacct(slurm_executor, job_dir: Path) -> None:
    beat = job_dir / "heartbeat.txt"
    job = slurm_executor(time=3).submit(heartbeat, str(beat), 300.0)
    wait_for(beat.exists, 60, f"job {job.job_id} to start beating")

    subprocess.run(["scancel", job.job_id], check=True, timeout=PROBE_TIMEOUT_S)

    wait_for_state(job.job_id, "CANCELLED", SETTLE_S)
    # the process really stops (submitit ignores SIGTERM, so SIGKILL comes after KillWait)
    wait_for(lambda: time.time() - beat.stat().st_mtime > 2.0, KILL_WAIT_S + 20,
             f"job {job.job_id}'s process to stop after scancel")
    assert job.done(force_check=True)
    assert job.state.startswith("CANCELLED")


@pytest.mark.timeout(150)
def test_scontrol_requeue_resumes_from_checkpoint(slurm_executor, job_dir: Path) -> None:
    # scontrol requeue sends SIGTERM, which submitit ignores: the job runs KillWait (5 s) more steps
    # before SIGKILL, so it must have more than that left when interrupted.
    steps, interrupt_at = 12, 2
    work = job_dir / "work"
    work.mkdir()
    job = slurm_executor(time=5).submit(ResumableCounter(), str(work), steps, 1.0)
    wait_for(lambda: checkpoint_step(work) >= interrupt_at, 60, f"job {job.job_id} to reach step {interrupt_at}")

    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=PROBE_TIMEOUT_S)
    result = job.result()

    assert result == uninterrupted_result(steps)
    starts = read_starts(work)
    assert len(starts) >= 2, f"the job never restarted: {starts}"
    assert starts[0]["from_step"] == 0
    assert starts[-1]["from_step"] >= interrupt_at        # resumed, not restarted from scratch
    assert starts[-1]["restart_count"] >= 1
    assert {s["job_id"] for s in starts} == {job.job_id}   # a requeue keeps the job id
    wait_for_state(job.job_id, "COMPLETED", SETTLE_S)


@pytest.mark.timeout(300)
def test_time_limit_checkpoints_requeues_and_resumes(slurm_executor, job_dir: Path) -> None:
    # A real time limit (see slurm_util.TIME_LIMIT_MIN): the USR2 warning comes 30-60 s in, before the
    # 1-s steps can finish; the resumed run steps every 0.05 s and ends long before the next check.
    # A second requeue is allowed: the signal can come late.
    steps, max_timeouts = TIMEOUT_STEPS, 3
    work = job_dir / "work"
    work.mkdir()
    executor = slurm_executor(time=TIME_LIMIT_MIN, signal_delay_s=SIGNAL_DELAY_S, max_num_timeout=max_timeouts)
    job = executor.submit(ResumableCounter(), str(work), steps, 1.0, 0.05)
    result = job.result()

    assert result == uninterrupted_result(steps)
    starts = read_starts(work)
    assert 2 <= len(starts) <= 1 + max_timeouts, f"expected 1-{max_timeouts} requeues, saw starts {starts}"
    assert starts[0]["from_step"] == 0 and starts[0]["step_s"] == 1.0
    assert 0 < starts[1]["from_step"] < steps             # resumed mid-way from its checkpoint
    assert starts[1]["step_s"] == 0.05                    # ...through submitit's checkpoint() requeue
    wait_for_state(job.job_id, "COMPLETED", SETTLE_S)


@pytest.mark.timeout(150)
@pytest.mark.distributed
def test_two_srun_tasks_train_like_one_process(slurm_executor, job_dir: Path) -> None:
    steps, global_batch = 4, 8
    # one process, whole batch: in a fresh process, like the SLURM tasks (no state of this pytest process)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        reference = pool.submit(train_tiny_gathered, steps, global_batch).result()
        initial = pool.submit(train_tiny_gathered, 0, global_batch).result()

    job = slurm_executor(time=3, nodes=1, ntasks_per_node=2).submit(train_tiny_gathered, steps, global_batch)
    results = sorted(job.results(), key=lambda r: r["rank"])

    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world"] == 2 for r in results)
    assert [r["env"]["SLURM_PROCID"] for r in results] == ["0", "1"]
    assert all(r["env"]["SLURM_NTASKS"] == "2" for r in results)
    assert [r["local_rank"] for r in results] == [0, 1]
    for r in results:
        assert torch.allclose(torch.tensor(r["weight"]), torch.tensor(reference["weight"]), atol=1e-5)
        assert torch.allclose(torch.tensor(r["bias"]), torch.tensor(reference["bias"]), atol=1e-5)
        assert r["losses"] == pytest.approx(reference["losses"], abs=1e-5)
    assert not torch.allclose(torch.tensor(reference["weight"]), torch.tensor(initial["weight"]), atol=1e-3)
    # both tasks left the process group (bike.distributed.shutdown: barrier, destroy) and exited cleanly:
    # no c10d thread is left for interpreter teardown to abort on, so the step must be COMPLETED
    from tests.slurm.slurm_util import sacct_state

    wait_for(lambda: sacct_state(job.job_id).split(" ")[0] not in ("", "PENDING", "RUNNING", "COMPLETING"),
             2 * SETTLE_S, f"job {job.job_id} to end in sacct")
    state = sacct_state(job.job_id)
    errs = "".join(p.read_text() for p in Path(job.paths.stderr).parent.glob(f"{job.job_id}_*_log.err"))
    assert state.startswith("COMPLETED"), (state, errs)
    assert "terminate called" not in errs and "Traceback" not in errs, errs
