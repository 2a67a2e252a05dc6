"""Running (or continuing) a study: :func:`run_study`, in this process or as a worker array, then
its summary, files and MLflow log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from bike.rundir import atomic_write_text
from harness.spec import ResourceSpec
from harness.tuning.artifacts import write_artifacts
from harness.tuning.mlflow_log import log_study_to_mlflow
from harness.tuning.problem import ProblemFactory, k_high, make_objective
from harness.tuning.result import StudyResult, summarise_study
from harness.tuning.spec import SweepSpec, SweepSpecError
from harness.tuning.storage import _create_study, make_sampler, resolve_storage, trials_per_worker
from harness.tuning.workers import DEFAULT_WORKER_POLL_S, run_worker_array, worker_parameters


# ================================================================================= running a study
def run_study(
    spec: SweepSpec,
    factory: ProblemFactory,
    workers: Optional[int] = None,
    tracking_uri: Optional[str] = None,
    artifact_location: Optional[str] = None,
    study_dir: Optional[str | Path] = None,
    executor: Optional[str] = None,
    resources: Optional[ResourceSpec] = None,
    poll_s: float = DEFAULT_WORKER_POLL_S,
    log: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or continue) the study.

    ``workers`` (default ``spec.workers``) > 1 go out as ONE submitit job array of that many
    :class:`StudyWorker` tasks on ``executor`` (default ``spec.executor``, else ``local``) with
    ``spec.resources`` overridden by ``resources``; the parent waits for the array and fails with a
    :class:`StudyWorkerError` naming each failed task and its log. One worker runs in this process
    (no submission) unless the executor is ``slurm``. Each worker runs ``spec.n_trials`` trials (one
    when nothing is sampled). A study name is bound to its source run, split, objective and space:
    continuing it with others is refused. Afterwards the parent computes the exact λ curve for the
    best params, writes ``<study_dir>/best.json`` and the plots, and logs everything to MLflow when
    ``tracking_uri`` is given (outside the timed trial loop).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workers = workers or spec.workers
    if workers < 1:
        raise SweepSpecError(f"workers: got {workers}; expected >= 1")
    cluster = executor or spec.executor or "local"
    if cluster not in ("local", "slurm", "debug"):
        raise SweepSpecError(f"executor: got {cluster!r}; expected one of 'local', 'slurm' or 'debug'")
    res = spec.resources.merged(resources)
    in_process = workers == 1 and cluster != "slurm"
    if not in_process:
        worker_parameters(cluster, res, job_name=f"tune-{spec.study}")  # resources that cannot work fail before anything else
        limit_s = float(res.timeout_min or 0) * 60
        if spec.timeout_s is not None and spec.timeout_s >= limit_s:
            raise SweepSpecError(
                f"timeout_s={spec.timeout_s:g} is not below the worker tasks' wall-clock limit resources.timeout_min="
                f"{res.timeout_min:g} ({limit_s:g} s): a task would be killed in the middle of a trial; "
                "expected timeout_s < 60 * resources.timeout_min"
            )
    study_dir = Path(study_dir) if study_dir is not None else spec.study_dir()
    study_dir.mkdir(parents=True, exist_ok=True)
    if factory.study_dir is None:
        factory.study_dir = str(study_dir.resolve())
    storage = resolve_storage(spec, study_dir, cluster)
    problem = factory()
    kmax = k_high(spec.space, problem.cache)
    study = _create_study(spec, storage, make_sampler(spec, kmax, 0))
    identity = {
        "objective": spec.objective,
        "tune_on": spec.tune_on,
        "split": problem.cache.split,
        "source_run": str(Path(factory.source_run).resolve()),
        "space": spec.space.model_dump_json(),
    }
    for key, value in identity.items():
        before = study.user_attrs.get(key)
        if before is not None and before != value:
            raise SweepSpecError(
                f"study {spec.study!r} in {storage} was run with {key}={before!r}, now {value!r}; "
                "its trials would not be comparable: use another study name (or storage)"
            )
        study.set_user_attr(key, value)
    t0 = time.perf_counter()
    if in_process:
        study.optimize(make_objective(problem, spec.space, kmax), n_trials=trials_per_worker(spec), timeout=spec.timeout_s)
        worker_info: dict[str, Any] = {"executor": "in-process", "workers": 1}
    else:
        before = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        summaries = run_worker_array(factory, storage, workers, cluster, res, study_dir, poll_s=poll_s, log=log,
                                     target_complete=before + workers * trials_per_worker(spec))
        worker_info = {
            "executor": cluster,
            "workers": workers,
            "trials_per_worker": [len(w["trials"]) for w in summaries],
            "hosts": sorted({str(w["host"]) for w in summaries}),
        }
    trial_seconds = time.perf_counter() - t0
    study = _create_study(spec, storage, make_sampler(spec, kmax, 0))
    result = summarise_study(spec, study, problem, study_dir, storage, trial_seconds, factory.source_run)
    result.extras["worker_array"] = worker_info
    write_artifacts(spec, study, problem, result, study_dir)
    if tracking_uri:
        result.mlflow_run_id = log_study_to_mlflow(spec, study, result, study_dir, tracking_uri, artifact_location)
        atomic_write_text(study_dir / "best.json", json.dumps(result.to_json(), indent=2))
    return result
