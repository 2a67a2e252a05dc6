"""Fixtures for tests that go through a real SLURM controller (``@pytest.mark.slurm``).

A test marked ``slurm`` is skipped, with the reason printed in pytest's summary (``-ra``), when the
client tools are missing, ``scontrol ping`` does not answer, or ``sacct`` fails (submitit reads job
states only through sacct). Bring a local cluster up with ``make slurm-up``.

Set ``BIKEBENCH_REQUIRE_SLURM=1`` (CI does, after ``make slurm-up``) to make such a test fail instead
of skipping when the cluster is not usable.

Knobs for running these tests against another cluster:
    BIKEBENCH_SLURM_PARTITION   partition to submit to (default: the cluster's default partition)
    BIKEBENCH_SLURM_ACCOUNT     account to charge (default: none)
    BIKEBENCH_SLURM_TEST_DIR    a directory on a filesystem the compute nodes share (default: pytest's
                                tmp_path, which is enough on one node)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional

import cloudpickle
import pytest
import submitit

from tests.slurm import slurm_jobs
from tests.slurm.slurm_util import PROBE_TIMEOUT_S

# The compute node unpickles the job callables without tests/ on its path.
cloudpickle.register_pickle_by_value(slurm_jobs)


def _probe_cluster() -> Optional[str]:
    """None when a usable controller answers, else why not (shown as the skip reason)."""
    for tool in ("scontrol", "sbatch", "sacct", "srun"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not on PATH (no SLURM client tools; run `make slurm-up`)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"`scontrol ping` did not answer within {PROBE_TIMEOUT_S}s"
    if ping.returncode != 0:
        detail = [line for line in (ping.stdout + ping.stderr).splitlines() if line.strip(" *\n")]
        return f"`scontrol ping` failed: {detail[0].strip() if detail else 'no output'} (run `make slurm-up`)"
    try:
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"`sacct` did not answer within {PROBE_TIMEOUT_S}s"
    if acct.returncode != 0:
        return f"`sacct` fails ({acct.stderr.strip()}): submitit cannot read job states without accounting"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skip the test (with the reason) unless a SLURM controller with accounting answers; fail
    instead when ``BIKEBENCH_REQUIRE_SLURM=1``."""
    reason = _probe_cluster()
    if reason is None:
        return
    if os.environ.get("BIKEBENCH_REQUIRE_SLURM") == "1":
        pytest.fail(f"BIKEBENCH_REQUIRE_SLURM=1 but no usable SLURM cluster: {reason}", pytrace=False)
    pytest.skip(f"no usable SLURM cluster: {reason}")


@pytest.fixture(autouse=True)
def _skip_without_slurm(request: pytest.FixtureRequest) -> None:
    """Every ``@pytest.mark.slurm`` test depends on `slurm_cluster`."""
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A directory unique to this test, on the shared filesystem when BIKEBENCH_SLURM_TEST_DIR is set.

    SLURM job ids restart at 1 with a fresh state directory, so submitit folders must never be reused
    (stale result pickles would be read back).
    """
    shared = os.environ.get("BIKEBENCH_SLURM_TEST_DIR")
    if not shared:
        return tmp_path
    path = Path(shared) / f"bikebench-test-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def slurm_executor(job_dir: Path, slurm_cluster: None) -> Iterator[Callable[..., submitit.SlurmExecutor]]:
    """Factory of explicit `submitit.SlurmExecutor`s whose jobs share one name unique to this test.

    ``make(**params)`` -> an executor writing to ``job_dir/submitit``, one CPU per task, the test's
    partition/account, and ``params`` on top. At teardown every job of this test still queued or
    running is cancelled, so a failed test leaves nothing on the cluster.
    """
    name = f"bbtest-{uuid.uuid4().hex[:10]}"

    def make(max_num_timeout: int = 3, **params: object) -> submitit.SlurmExecutor:
        executor = submitit.SlurmExecutor(folder=job_dir / "submitit", max_num_timeout=max_num_timeout)
        base: dict[str, object] = {"job_name": name, "cpus_per_task": 1, "time": 5}
        if os.environ.get("BIKEBENCH_SLURM_PARTITION"):
            base["partition"] = os.environ["BIKEBENCH_SLURM_PARTITION"]
        if os.environ.get("BIKEBENCH_SLURM_ACCOUNT"):
            base["account"] = os.environ["BIKEBENCH_SLURM_ACCOUNT"]
        base.update(params)
        executor.update_parameters(**base)
        return executor

    yield make
    subprocess.run(["scancel", "--name", name], capture_output=True, timeout=PROBE_TIMEOUT_S)
