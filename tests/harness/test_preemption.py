"""A requeue signal mid-epoch loses no optimiser step: the real engine in a real submitit job."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import submitit
import torch

from harness.jobs import RunJob
from harness.rundir import RunDir
from tests.bike.engine.tinyrun import make_dataset, tiny_config



def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    return state["model"]


def _steps(run_dir: Path) -> list[int]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train" and "step" in rec:
            out.append(int(rec["step"]))
    return out


def test_sigusr2_mid_epoch_checkpoints_requeues_and_matches_uninterrupted(tmp_path):
    data = make_dataset(tmp_path / "data", per_class_train=4, per_class_val=1)
    # 12 training videos, batch 2 -> 6 steps an epoch; 10 epochs -> 60 steps: long enough to interrupt
    cfg = tiny_config(data, train={"epochs": 10, "batch_size": 2, "warmup_epochs": 1, "log_every": 1})

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=5)
    # the uninterrupted run in a job of its own, so both runs see the same process environment
    straight = tmp_path / "straight"
    executor.submit(RunJob(straight, cfg.to_yaml(), "bike.train:run")).result()

    run_dir = tmp_path / "interrupted"
    job = executor.submit(RunJob(run_dir, cfg.to_yaml(), "bike.train:run"))

    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a few steps of the first epoch are done
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and len(_steps(run_dir)) >= 3:
            break
        time.sleep(0.05)
    # SIGUSR2 to the job's own process, as SLURM sends it before a time limit or on preemption
    os.kill(int(RunDir(run_dir).read_state()["pid"]), signal.SIGUSR2)
    result = job.result()

    assert result["status"] == "done"
    log = (run_dir / "log.txt").read_text()
    resumed = re.search(r"resumed from .*latest\.pt at epoch (\d+), batch (\d+), step (\d+)", log)
    assert resumed, "the requeued job did not resume from latest.pt"
    assert int(resumed.group(2)) > 0  # mid-epoch: the steps since the epoch began were kept
    history = [h["state"] for h in RunDir(run_dir).read_state()["history"]]
    assert "requeued" in history and history[-1] == "done"
    # every optimiser step ran exactly once, and the weights equal the uninterrupted run's
    assert sorted(set(_steps(run_dir))) == sorted(set(_steps(straight)))
    a, b = _weights(straight), _weights(run_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
