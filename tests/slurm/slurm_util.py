"""Small helpers the SLURM tests share: sacct queries and polling."""

from __future__ import annotations

import subprocess
import time
from typing import Callable

import pytest

#: Seconds allowed for one call of a SLURM client tool.
PROBE_TIMEOUT_S = 10
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
