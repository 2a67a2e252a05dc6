"""Small helpers the SLURM tests share: sacct queries and polling."""

from __future__ import annotations

import subprocess
import time
from typing import Callable

import pytest

#: Seconds allowed for one call of a SLURM client tool.
PROBE_TIMEOUT_S = 10
#: A real time limit for the requeue tests: ``--time=2`` with the USR2 warning 60 s before the end. slurmctld
#: checks time limits every 30 s and sends the warning up to 30 s early, so it comes 30-60 s into the job: late
#: enough that the job's Python has installed submitit's handler (CI saw ``--time=1 --signal=USR2@55`` kill a
#: job during start-up), early enough that `TIMEOUT_STEPS` steps of 1 s cannot have finished.
TIME_LIMIT_MIN = 2
SIGNAL_DELAY_S = 60
TIMEOUT_STEPS = 75
#: How often `wait_for` polls.
POLL_S = 0.5


def sacct_state(job_id: str) -> str:
    """State of the job's allocation as sacct records it (e.g. ``RUNNING``, ``CANCELLED by 0``), '' if none."""
    out = subprocess.run(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "State"],
                         capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if lines else ""


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every POLL_S seconds; fail the test naming ``what`` after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(POLL_S)


def wait_for_state(job_id: str, prefix: str, timeout_s: float) -> None:
    """Wait until sacct's state of ``job_id`` starts with ``prefix`` (the result file can come first)."""
    wait_for(lambda: sacct_state(job_id).startswith(prefix), timeout_s,
             f"sacct to report job {job_id} {prefix} (last: {sacct_state(job_id)!r})")
