"""What a submitted job runs: a registry of job kinds and the checkpointable job around them.

A job kind maps to a function ``fn(config: RunConfig, run_dir: Path) -> dict`` that does the work and
writes the run directory (``result.json`` last). The defaults are the engine's entry points,
imported lazily inside the job (``"train" -> bike.train:run``, ``"evaluate" -> bike.evaluate:run``);
tests and plug-ins register their own with :func:`register_job_kind` or pass a callable directly.

:class:`RunJob` is a ``submitit.helpers.Checkpointable``: on a timeout or preemption signal
submitit calls :meth:`RunJob.checkpoint`, which records ``requeued`` and resubmits the same job;
the engine then resumes from ``run_dir/checkpoints/latest.pt``. A job whose run is already done
returns the stored result without running again.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Union

import submitit

from harness.rundir import RunDir

JobFn = Callable[..., Any]
JobTarget = Union[str, JobFn]  # "module:function" or a callable

DEFAULT_JOB_KINDS: dict[str, str] = {"train": "bike.train:run", "evaluate": "bike.evaluate:run"}
_JOB_KINDS: dict[str, JobTarget] = dict(DEFAULT_JOB_KINDS)


def register_job_kind(kind: str, target: JobTarget) -> None:
    """Make ``kind`` run ``target`` ("module:function" or a callable ``fn(config, run_dir)``)."""
    if not (callable(target) or (isinstance(target, str) and ":" in target)):
        raise ValueError(f"job kind {kind!r}: got {target!r}; expected a callable or 'module:function'")
    _JOB_KINDS[kind] = target


def reset_job_kinds() -> None:
    """Back to the engine's defaults."""
    _JOB_KINDS.clear()
    _JOB_KINDS.update(DEFAULT_JOB_KINDS)


def job_target(kind: str) -> JobTarget:
    """The registered target of ``kind`` (a string target is imported only inside the job)."""
    try:
        return _JOB_KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown job kind {kind!r}; registered: {', '.join(sorted(_JOB_KINDS))}") from None


def import_target(target: JobTarget) -> JobFn:
    """``"pkg.mod:fn"`` → the function (callables pass through)."""
    if callable(target):
        return target
    module, _, name = str(target).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"job target {target!r} cannot be imported: {exc}") from exc


def _job_id() -> str:
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:
        return os.environ.get("SLURM_JOB_ID", f"pid{os.getpid()}")


def _is_rank_zero() -> bool:
    try:
        return submitit.JobEnvironment().global_rank == 0
    except RuntimeError:
        return True


#: Seconds the engine gets, after a timeout/preemption signal, to reach the next optimiser step and
#: write ``latest.pt`` before submitit's own handler requeues the job anyway (SLURM signals 90 s early).
PREEMPT_GRACE_S = float(os.environ.get("BIKEBENCH_PREEMPT_GRACE_S", "45"))


def _preempt_signal() -> int:
    """The signal submitit requeues on (SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return int(getattr(signal, f"SIG{name}", signal.SIGUSR2))


class _Preemption:
    """Routes the requeue signal (SIGUSR2) to the engine first, then to submitit.

    On the signal the engine is asked to stop (:func:`bike.engine.train_loop.request_stop`): at the next
    optimiser step it writes ``checkpoints/latest.pt`` and raises ``Preempted``, so no step done since the
    last epoch end is lost. The job then hands the signal to submitit's handler (checkpoint → requeue →
    exit). If the engine is not in a training loop (evaluation, a plug-in job) submitit's handler runs
    at once; if the loop does not reach a step within ``grace_s`` seconds, it runs then.
    """

    def __init__(self, grace_s: float = PREEMPT_GRACE_S):
        self.grace_s = grace_s
        self.original: Any = None
        self.timer: threading.Timer | None = None
        self.signalled = False
        self.sig = _preempt_signal()

    def _handler(self, signum: int, frame: Any) -> None:
        self.signalled = True
        engine = sys.modules.get("bike.engine.train_loop")
        if engine is None or not engine.training_active():
            self.hand_over()  # not training (evaluation, a plug-in job): submitit's handler at once
            return
        engine.request_stop()
        signal.signal(self.sig, self.original)  # a second signal goes straight to submitit
        self.timer = threading.Timer(self.grace_s, os.kill, (os.getpid(), self.sig))
        self.timer.daemon = True
        self.timer.start()

    def hand_over(self) -> None:
        """Run submitit's handler now (it requeues the job and exits the process)."""
        if self.timer is not None:
            self.timer.cancel()
        handler = self.original
        signal.signal(self.sig, handler)
        if callable(handler):
            handler(self.sig, None)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.original = signal.getsignal(self.sig)
        if not callable(self.original):  # not under submitit: nothing to route
            yield self
            return
        signal.signal(self.sig, self._handler)
        try:
            yield self
        finally:
            if self.timer is not None:
                self.timer.cancel()
            signal.signal(self.sig, self.original)


def job_threads(requested: Optional[int] = None) -> Optional[int]:
    """CPU threads a job's torch may use: ``requested``, else SLURM's ``--cpus-per-task``, else None.

    None leaves torch's default (every core). Jobs sharing a machine (the local executor running
    ``parallelism`` jobs at once) must not each use every core: oversubscribed OpenMP threads made a
    smoke run ~3-4x slower on 2 cores (docs/world.md).
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads={requested}; expected >= 1")
        return requested
    env = os.environ.get("SLURM_CPUS_PER_TASK")
    if env and env.isdigit() and int(env) >= 1:
        return int(env)
    return None


def threads_for(cluster: str, cpus_per_task: Optional[int], sharing: int) -> Optional[int]:
    """Threads of one job or task: ``cpus_per_task`` when set; ``local`` jobs share this machine's
    cores with ``sharing - 1`` others (``cpu_count // sharing``); else None (SLURM: read inside the job)."""
    if cpus_per_task is not None:
        return cpus_per_task
    if cluster == "local":
        return max(1, (os.cpu_count() or 1) // max(1, sharing))
    return None


#: Thread-pool variables of the numerical libraries a job may start after the limit is applied.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def apply_job_threads(threads: Optional[int], import_torch: bool = True) -> None:
    """Limit torch's intra-op threads (and OpenMP's/BLAS's, for libraries started later) to ``threads``.

    ``import_torch=False`` sets torch's only when it is already imported (a study worker whose text
    side may never need it)."""
    if threads is None:
        return
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    if import_torch or "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)


#: bike.engine.attributes_cache.SHARED_CACHE_ENV (not imported here: it would import torch).
SHARED_CACHE_ENV = "BIKE_SHARED_CACHE"
#: The cross-run store of a results directory (generated attributes shared by every run).
SHARED_CACHE_DIR = "cache"


@contextlib.contextmanager
def shared_cache_env(run_dir: Path):
    """``$BIKE_SHARED_CACHE`` = ``<results>/cache`` of this run (``<results>/runs/<id>``) while the job
    runs, unless the user set it; restored afterwards (debug jobs run in the caller's process)."""
    before = os.environ.get(SHARED_CACHE_ENV)
    if before is None:
        os.environ[SHARED_CACHE_ENV] = str(Path(run_dir).resolve().parent.parent / SHARED_CACHE_DIR)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SHARED_CACHE_ENV, None)


class RunJob(submitit.helpers.Checkpointable):
    """One run as a submitit job: ``RunJob(run_dir, config_yaml, target, threads)()`` → the result dict.

    ``threads``: torch threads for the job (see :func:`job_threads`; None = SLURM's allocation or
    torch's default).
    """

    def __init__(self, run_dir: str | Path, config_yaml: str, target: JobTarget, threads: Optional[int] = None):
        self.run_dir = str(run_dir)
        self.config_yaml = config_yaml
        self.target = target
        self.threads = threads

    def __call__(self) -> dict[str, Any]:
        import yaml

        from bike.config import RunConfig

        rd = RunDir(self.run_dir)
        if rd.is_done():
            return rd.result() or {}
        lead = _is_rank_zero()
        if lead:
            rd.write_state("running", job_id=_job_id(), host=os.uname().nodename, pid=os.getpid())
        preemption = _Preemption()
        try:
            config = RunConfig.model_validate(yaml.safe_load(self.config_yaml))
            if config.numerics.pinned:  # before the engine imports torch (bike.numerics)
                from bike.numerics import PINNED_THREADS, pin_environment

                pin_environment()
                apply_job_threads(PINNED_THREADS)
            else:
                apply_job_threads(job_threads(getattr(self, "threads", None)))
            with preemption.installed(), shared_cache_env(rd.path):
                try:
                    result = import_target(self.target)(config, rd.path)
                except Exception as exc:
                    if preemption.signalled and type(exc).__name__ == "Preempted":
                        preemption.hand_over()  # latest.pt is written: requeue now (exits)
                    raise
        except SystemExit:
            raise  # submitit's requeue exit after checkpoint(): the state already says requeued
        except BaseException as exc:  # noqa: BLE001 - record every failure, then re-raise
            if lead:
                timed_out = type(exc).__name__ == "UncompletedJobError"
                rd.write_state(
                    "failed",
                    job_id=_job_id(),
                    reason="timed out too many times" if timed_out else f"{type(exc).__name__}: {exc}",
                    error=traceback.format_exc(limit=20),
                )
            raise
        if lead:
            if not rd.result_path.exists():
                from harness.rundir import atomic_write_json

                atomic_write_json(rd.result_path, {**(result if isinstance(result, dict) else {}), "status": "done"})
            rd.write_state("done" if rd.is_done() else "failed", job_id=_job_id(),
                           **({} if rd.is_done() else {"reason": "result.json does not say done"}))
        return rd.result() or {}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/preemption: mark requeued and resubmit the same job."""
        if _is_rank_zero():
            RunDir(self.run_dir).write_state("requeued", job_id=_job_id(), reason="timeout or preemption signal")
        return submitit.helpers.DelayedSubmission(
            RunJob(self.run_dir, self.config_yaml, self.target, getattr(self, "threads", None)), *args, **kwargs)
