"""The study's workers: one worker's trial loop, :class:`StudyWorker` (one task of the submitit job
array, requeued on a timeout or a preemption), recovery of interrupted trials, and
:func:`run_worker_array` (submit the array, wait, name each failed task and its log)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import submitit

from harness.spec import ResourceSpec
from harness.tuning.problem import ProblemFactory, k_high, make_objective
from harness.tuning.spec import SweepSpecError
from harness.tuning.storage import _create_study, grid_exhausted, grid_space, make_sampler, trials_per_worker

#: Seconds between polls of the worker array's jobs.
DEFAULT_WORKER_POLL_S = 1.0


#: Trial user attribute naming the worker task that ran it (stale RUNNING trials are recovered by it).
WORKER_ATTR = "worker"
#: Trial user attribute of a re-run: the number of the interrupted trial it repeats.
RETRY_ATTR = "retry_of"


def recover_stale_trials(study: Any, worker: int) -> list[int]:
    """Mark this worker's RUNNING trials FAIL and queue their parameters again; returns the numbers queued.

    A worker runs one trial at a time, so a trial still RUNNING under its index when it (re)starts was
    cut off by a timeout or a preemption: its point is re-run first (``enqueue_trial``; the grid
    sampler leaves enqueued trials alone), so a requeued study loses no point of its space.
    """
    import optuna

    stale = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
             if t.user_attrs.get(WORKER_ATTR) == worker]
    done = [t.params for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    retried = []
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        if dict(t.params) in done:  # another worker finished that point meanwhile (the grid sampler
            continue                # gives running points to idle workers): nothing to redo
        study.enqueue_trial(dict(t.params), user_attrs={RETRY_ATTR: int(t.number)}, skip_if_exists=False)
        retried.append(int(t.number))
    return retried


#: File in the study directory that serialises the grid workers' choice of their next point.
GRID_LOCK = ".grid.lock"


def _grid_loop(study: Any, objective: Callable[[Any], float], grid: dict[str, list], lock_path: Path, n_trials: int,
               timeout_s: Optional[float], target_complete: Optional[int], done: list[int]) -> None:
    """Run grid points one at a time, each at most once across every worker of the study.

    Optuna's grid sampler hands a point that another worker is still running to an idle worker (a
    duplicate), and two workers may choose together. Here a worker chooses under a file lock shared
    by the study's workers: a queued re-run of an interrupted trial first, else the first point that
    no trial has taken (complete, running or queued), enqueued and asked in the same locked step;
    with none left it stops.
    """
    import itertools

    import optuna

    from bike.rundir import file_lock

    states = optuna.trial.TrialState
    names = sorted(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    start = time.monotonic()
    for _ in range(n_trials):
        if timeout_s is not None and time.monotonic() - start >= timeout_s:
            return
        with file_lock(lock_path):
            trials = study.get_trials(deepcopy=False)
            if target_complete is not None and sum(t.state == states.COMPLETE for t in trials) >= target_complete:
                return
            if not any(t.state == states.WAITING for t in trials):
                taken = [{n: t.params.get(n, (t.system_attrs.get("fixed_params") or {}).get(n)) for n in names}
                         for t in trials if t.state in (states.COMPLETE, states.RUNNING, states.WAITING)]
                free = [p for p in points if p not in taken]
                if not free:
                    return
                study.enqueue_trial(free[0], skip_if_exists=False)
            trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=states.PRUNED)
            continue
        except BaseException:
            study.tell(trial, state=states.FAIL)
            raise
        study.tell(trial, value)
        done.append(int(trial.number))


def _worker_main(factory: ProblemFactory, storage: str, worker: int, target_complete: Optional[int] = None) -> list[int]:
    """One worker: build the problem, join the study, run ``spec.n_trials`` trials.

    ``target_complete``: stop once the study holds this many complete trials (all workers together),
    so that a worker requeued after a timeout runs only what is left. Returns the numbers of the
    trials this worker completed.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = factory.spec
    problem = factory()
    kmax = k_high(spec.space, problem.cache)
    study = _create_study(spec, storage, make_sampler(spec, kmax, worker))
    retried = recover_stale_trials(study, worker)
    if retried:
        print(f"study {spec.study} worker {worker}: re-running interrupted trial(s) {retried}", flush=True)
    done: list[int] = []
    inner = make_objective(problem, spec.space, kmax)

    def objective(trial: Any) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)
        return inner(trial)

    def record(_study: Any, trial: Any) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            done.append(int(trial.number))

    callbacks: list[Callable] = [record]
    if grid_exhausted(spec, study, kmax):
        return done
    grid = grid_space(spec, kmax) if spec.sampler == "grid" else {}
    if grid:
        _grid_loop(study, objective, grid, Path(spec.study_dir()) / GRID_LOCK, trials_per_worker(spec),
                   spec.timeout_s, target_complete, done)
        return done
    if target_complete is not None:
        from optuna.study import MaxTrialsCallback

        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if complete >= target_complete:
            return done
        callbacks.append(MaxTrialsCallback(target_complete, states=(optuna.trial.TrialState.COMPLETE,)))
    study.optimize(objective, n_trials=trials_per_worker(spec), timeout=spec.timeout_s, callbacks=callbacks)
    return done


@dataclass
class StudyWorker(submitit.helpers.Checkpointable):
    """One task of a study's worker array (a picklable callable that submitit runs on the node).

    On a timeout or a preemption submitit calls :meth:`checkpoint` and requeues the same task; the
    requeued task re-runs the trial that was cut off (:func:`recover_stale_trials`) and stops at
    ``target_complete`` complete trials, so nothing is lost and nothing is done twice.

    Args:
        factory: builds the problem in the task's process (the parent has validated the caches).
        storage: the study's storage string (absolute paths).
        worker: the task's index in the array; seeds its sampler (``spec.seed + worker``).
        threads: OpenMP/torch threads of the task (None: leave them).
        target_complete: complete trials the study should hold when the array is done.
    """

    factory: ProblemFactory
    storage: str
    worker: int
    threads: Optional[int] = None
    target_complete: Optional[int] = None
    attempts: int = 1

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue this task (the study's storage is its checkpoint)."""
        print(f"study {self.factory.spec.study} worker {self.worker}: checkpoint signal, requeued "
              f"(attempt {self.attempts + 1})", flush=True)
        return submitit.helpers.DelayedSubmission(replace(self, attempts=self.attempts + 1), *args, **kwargs)

    def __call__(self) -> dict[str, Any]:
        """Run the worker's trials; returns ``{worker, trials, host, pid, threads, seconds}`` (also printed to the task's log).

        ``threads`` (set for tasks in their own process only) caps the OpenMP/torch threads of the task,
        so that N local tasks do not each start one thread per core (the text tower runs in torch).
        """
        import socket

        from harness.jobs import apply_job_threads

        apply_job_threads(self.threads, import_torch=False)
        t0 = time.perf_counter()
        trials = _worker_main(self.factory, self.storage, self.worker, self.target_complete)
        summary = {
            "worker": self.worker,
            "attempts": self.attempts,
            "trials": trials,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": self.threads,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        print(f"study {self.factory.spec.study} worker {self.worker}: {json.dumps(summary)}", flush=True)
        return summary


class StudyWorkerError(RuntimeError):
    """A task of the worker array failed; the message names each failed task, its job id and its log file."""


def _error_summary(error: BaseException) -> str:
    """The last line of a job's traceback (submitit wraps it in a banner), else the exception's text."""
    text = str(error)
    if "failed during processing with trace" in text:
        body = text.split("-" * 22)
        trace = body[1] if len(body) >= 3 else text
        lines = [line.strip() for line in trace.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def worker_parameters(executor: str, resources: ResourceSpec, job_name: str) -> dict[str, Any]:
    """submitit parameters of the worker array (``harness.executor.slurm_parameters`` /
    ``local_parameters``; the debug executor records the limit only)."""
    from harness.executor import executor_parameters

    try:
        return executor_parameters(executor, resources, job_name)
    except ValueError as exc:
        raise SweepSpecError(str(exc)) from None


def worker_threads(executor: str, resources: ResourceSpec, workers: int) -> Optional[int]:
    """Threads per worker task: ``slurm.cpus_per_task`` when set; local tasks share this machine's cores
    (``cpu_count // workers``); None for debug (tasks run in this process) and for SLURM without it."""
    from harness.jobs import threads_for

    return None if executor == "debug" else threads_for(executor, resources.slurm.cpus_per_task, workers)


def run_worker_array(
    factory: ProblemFactory,
    storage: str,
    workers: int,
    executor: str,
    resources: ResourceSpec,
    study_dir: Path,
    poll_s: float = DEFAULT_WORKER_POLL_S,
    log: Callable[[str], None] = print,
    target_complete: Optional[int] = None,
) -> list[dict[str, Any]]:
    """Submit ``workers`` :class:`StudyWorker` tasks as ONE submitit job array and wait for all of them.

    ``target_complete``: complete trials the study should hold at the end (a requeued task stops there).

    Logs, pickles and results go to a folder of this invocation, ``<study_dir>/submitit/<time>-<pid>-<hex>/``
    (one sub-folder per task). Raises :class:`StudyWorkerError` naming every failed task (index, job id,
    the last line of its error, its stderr log) once all tasks have ended. Ctrl-C cancels the tasks.
    Returns each task's summary, in task order.
    """
    from harness.executor import invocation_folder, make_executor

    params = worker_parameters(executor, resources, job_name=f"tune-{factory.spec.study}")
    folder = invocation_folder(study_dir)
    ex = make_executor(executor, folder / "%j", resources, params)
    with ex.batch():
        jobs = [ex.submit(StudyWorker(factory, storage, w, worker_threads(executor, resources, workers), target_complete))
                for w in range(workers)]
    ids = [str(j.job_id) for j in jobs]
    log(f"study {factory.spec.study}: {workers} worker(s) submitted as one {executor} job array "
        f"({', '.join(ids)}); logs under {folder}")
    try:
        if executor != "debug":  # a debug job runs (in this process) when its outcome is asked for
            while not all(j.done() for j in jobs):
                time.sleep(poll_s)
        summaries: list[dict[str, Any]] = []
        failures: list[str] = []
        for index, job in enumerate(jobs):
            try:
                error = job.exception()
            except Exception as exc:  # noqa: BLE001 - e.g. UncompletedJobError for a killed or cancelled task
                error = exc
            if error is None:
                summaries.append(job.result())
                continue
            failures.append(
                f"  array task {index} (job {job.job_id}): {_error_summary(error)}\n"
                f"    log: {job.paths.stderr}"
            )
    except KeyboardInterrupt:
        for job in jobs:
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - best effort
                pass
        log(f"study {factory.spec.study}: interrupted; cancelled the worker tasks {', '.join(ids)}")
        raise
    if failures:
        raise StudyWorkerError(
            f"study {factory.spec.study}: {len(failures)} of {workers} worker task(s) of the {executor} job array failed "
            f"(storage {storage}; complete trials are kept, re-run to continue):\n" + "\n".join(failures)
        )
    return summaries
