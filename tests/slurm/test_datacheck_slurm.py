"""``bikebench data check`` as a 2-task job array on a real SLURM controller, the tasks' results merged."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from harness import datacheck as dc
from harness.spec import ResourceSpec
from tests.harness.test_datacheck import EXPECTED_BAD, _bad_by_entry, _needs, make_bad_dataset

pytestmark = pytest.mark.slurm


@pytest.mark.timeout(180)
def test_data_check_as_a_two_task_slurm_array_finds_every_planted_bad_file(slurm_cluster, job_dir: Path) -> None:
    dataset = make_bad_dataset(job_dir / "data")
    slurm: dict = {"cpus_per_task": 1}
    if os.environ.get("BIKEBENCH_SLURM_PARTITION"):
        slurm["partition"] = os.environ["BIKEBENCH_SLURM_PARTITION"]
    if os.environ.get("BIKEBENCH_SLURM_ACCOUNT"):
        slurm["account"] = os.environ["BIKEBENCH_SLURM_ACCOUNT"]
    lines: list[str] = []
    report = dc.check(_needs(dataset), dc.DecodeLevel("sample", 2), cache_file=job_dir / "cache.json", executor="slurm",
                      tasks=2, resources=ResourceSpec(timeout_min=5, slurm=slurm), folder=job_dir, poll_s=0.5,
                      log=lines.append)
    assert _bad_by_entry(report) == EXPECTED_BAD
    assert report.checked == report.files
    submitted = [ln for ln in lines if "submitted as one slurm job array" in ln]
    assert len(submitted) == 1 and "2 task(s)" in submitted[0]
    ids = re.findall(r"(\d+)_(\d+)", submitted[0])
    assert len(ids) == 2 and len({job for job, _ in ids}) == 1  # one array: <job>_0, <job>_1
    # the merged results are cached: a rerun submits nothing but the missing file
    again = dc.check(_needs(dataset), dc.DecodeLevel("sample", 2), cache_file=job_dir / "cache.json", executor="inline")
    assert again.checked == 1 and _bad_by_entry(again) == EXPECTED_BAD
