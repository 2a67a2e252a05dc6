"""Logging a study to MLflow after the optimisation: a parent run per study, a child run per
trial, idempotent (:func:`log_study_to_mlflow`). ``mlflow`` is imported only inside it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from harness.tuning.result import StudyResult
from harness.tuning.spec import SweepSpec


def _default_artifact_location(tracking_uri: str, results_dir: str, experiment: str) -> Optional[str]:
    """``<results>/mlartifacts/<experiment>`` (absolute, as MLflow 3 needs with a local store; the
    layout of ``harness.tracking``); a tracking server chooses its own."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return (Path(results_dir).resolve() / "mlartifacts" / experiment).as_uri()


def log_study_to_mlflow(
    spec: SweepSpec,
    study: Any,
    result: StudyResult,
    study_dir: Path,
    tracking_uri: str,
    artifact_location: Optional[str] = None,
) -> str:
    """A parent run per study and a child run per complete trial, in batches; idempotent.

    Re-logging the same study reuses its parent run (tag ``optuna_study`` + ``optuna_storage``) and
    skips trials already logged (tag ``optuna_trial``). Returns the parent run id.
    """
    import optuna
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_name = spec.experiment or "bikebench-tune"
    exp = client.get_experiment_by_name(exp_name)
    if exp is None:
        location = artifact_location or _default_artifact_location(tracking_uri, spec.results_dir, exp_name)
        exp_id = client.create_experiment(exp_name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    metric_key = spec.objective
    base_tags = {"bikebench_kind": "study", "optuna_study": spec.study, "optuna_storage": result.storage}
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.optuna_study = '{spec.study}' and tags.bikebench_kind = 'study'",
        max_results=50,
    )
    parent = next((r for r in found if r.data.tags.get("optuna_storage") == result.storage), None)
    if parent is None:
        parent = client.create_run(exp_id, run_name=spec.study, tags=base_tags)
    parent_id = parent.info.run_id
    children = client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=50_000
    )
    logged = {r.data.tags.get("optuna_trial") for r in children}
    now = int(time.time() * 1000)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if str(t.number) in logged:
            continue
        ts = int(t.datetime_complete.timestamp() * 1000) if t.datetime_complete else now
        params = {**t.params, **{k: v for k, v in t.user_attrs.items() if k in ("lam", "lam_lo", "lam_hi")}}
        child = client.create_run(
            exp_id,
            run_name=f"{spec.study}-trial-{t.number}",
            start_time=int(t.datetime_start.timestamp() * 1000) if t.datetime_start else ts,
            tags={"mlflow.parentRunId": parent_id, "optuna_trial": str(t.number), "optuna_study": spec.study, "tune_on": spec.tune_on},
        )
        client.log_batch(
            child.info.run_id,
            metrics=[Metric(metric_key, float(t.value), ts, t.number)],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(child.info.run_id, end_time=ts)
    flat = {f"best_{k}": v for k, v in result.best_params.items()}
    tags = {
        "tune_on": spec.tune_on,
        "split": result.split,
        "source_run": result.extras.get("source_run", ""),
        "lam_mode": "exact" if spec.space.exact_lambda else "sampled",
    }
    if spec.tune_on == "reported":
        tags["tuned_on_reported_split"] = "true"
    client.log_batch(
        parent_id,
        metrics=[
            Metric(f"best_{metric_key}", result.best_value, now, 0),
            Metric("best_lambda", result.best_lambda, now, 0),
            Metric("n_complete", float(result.n_complete), now, 0),
        ],
        params=[Param(k, str(v)) for k, v in {
            "objective": spec.objective,
            "sampler": spec.sampler,
            "n_trials_per_worker": spec.n_trials,
            "space": spec.space.model_dump_json(),
        }.items() if not _param_logged(parent, k)],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in flat.items() if isinstance(v, (int, float))])
    for name in ("best.json", "lambda_curve.png", "lambda_curve.json", "optimization_history.png",
                 "param_importances.png", "contour.png", "exact_k_lambda.png", "exact_k_lambda.json", "plots.json"):
        path = study_dir / name
        if path.exists():
            client.log_artifact(parent_id, str(path))
    client.set_terminated(parent_id)
    return parent_id


def _param_logged(run: Any, key: str) -> bool:
    return key in (run.data.params or {})
