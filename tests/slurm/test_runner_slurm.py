"""The harness's runner on a real SLURM controller: a dependent job array, and a cancelled job.

The job callable is `tests.harness.test_executor.fake_engine` (a resumable stand-in for the engine),
which that module registers with cloudpickle by value, so the compute node does not import ``tests/``.
"""

from __future__ import annotations

import functools
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness.executor import Runner, run_status
from harness.expand import expand
from harness.rundir import RunDir
from harness.spec import load_spec
from tests.harness.test_executor import fake_engine, write_spec
from tests.slurm.slurm_util import PROBE_TIMEOUT_S

pytestmark = pytest.mark.slurm


def test_slurm_array_with_afterok_dependency(job_dir: Path) -> None:
    variants = {"a": {"set": {"model.frames": 2}}, "b": {"stage": "attributes", "init_from": {"variant": "a"}}}
    resources = {"full": {"timeout_min": 5, "slurm": {"cpus_per_task": 1}}}
    plan = expand(load_spec(write_spec(job_dir / "s.yaml", variants, resources)), "full", job_dir / "r")
    engine = functools.partial(fake_engine, steps=1)
    runner = Runner(job_dir / "r", "slurm", job_targets={"train": engine}, poll_s=1.0, log=lambda m: None)
    out = runner.execute(plan)
    assert {o.state for o in out.values()} == {"done"}, out
    assert runner.submissions[1].parameters["dependency"].startswith("afterok:")
    assert all(RunDir(r.run_dir).last_submission()["cluster"] == "slurm" for r in plan.runs)


def test_slurm_cancelled_job_reads_cancelled(job_dir: Path) -> None:
    spec = write_spec(job_dir / "s.yaml", {"long": {}}, {"full": {"timeout_min": 5}})
    plan = expand(load_spec(spec), "full", job_dir / "r")
    run = plan.runs[0]
    engine = functools.partial(fake_engine, steps=600, sleep_s=0.1)
    runner = Runner(job_dir / "r", "slurm", job_targets={"train": engine}, poll_s=0.5, log=lambda m: None)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(out=runner.execute(plan)))
    thread.start()
    rd = RunDir(run.run_dir)
    deadline = time.time() + 60
    while rd.read_state().get("state") != "running" and time.time() < deadline:
        time.sleep(0.5)
    job_id = rd.last_submission()["job_id"]
    subprocess.run(["scancel", job_id], check=True, timeout=PROBE_TIMEOUT_S)
    thread.join(timeout=90)
    assert not thread.is_alive()
    assert box["out"][run.run_id].state == "cancelled"
    assert run_status(rd) == "cancelled" and rd.state() == "cancelled"
