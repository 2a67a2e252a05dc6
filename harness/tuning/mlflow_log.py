"""Logging a study to MLflow after the optimisation: a parent run per study, a child run per
trial, idempotent (:func:`log_study_to_mlflow`). ``mlflow`` is imported only inside it; the tag names
and the experiment/parent-run set-up are :mod:`harness.mlflow_runs`'s (shared with ``harness.tracking``)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Optional

from harness.mlflow_runs import (
    KIND_STUDY,
    TAG_KIND,
    TAG_PARENT_RUN,
    TAG_STORAGE,
    TAG_STUDY,
    TAG_TRIAL,
    TAG_TUNE_ON,
    artifact_location as default_artifact_location,
    experiment_id,
    parent_run,
    study_metric_name,
)
from harness.tuning.result import StudyResult
from harness.tuning.spec import SweepSpec


def log_study_to_mlflow(
    spec: SweepSpec,
    study: Any,
    result: StudyResult,
    study_dir: Path,
    tracking_uri: str,
    artifact_location: Optional[str] = None,
) -> str:
    """A parent run per study and a child run per complete trial, in batches; idempotent.

    Re-logging the same study reuses its parent run (tag ``bikebench.parent_key`` = ``study:<study>``,
    with the same ``optuna_storage``) and skips trials already logged (tag ``optuna_trial``). Returns the
    parent run id.
    """
    import optuna
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_name = spec.experiment or "bikebench-tune"
    location = artifact_location or default_artifact_location(tracking_uri, spec.results_dir, exp_name)
    exp_id = experiment_id(client, exp_name, location)
    # the objective on the tuning split, in percent like every run's metrics (``tune/fused_top1``)
    metric_key = study_metric_name(result.split or "tune", spec.objective)
    with warnings.catch_warnings():  # experimental in Optuna 3.x/4.x; what optuna-dashboard shows as the axis
        warnings.simplefilter("ignore")
        study.set_metric_names([metric_key])
    base_tags = {TAG_KIND: KIND_STUDY, TAG_STUDY: spec.study, TAG_STORAGE: result.storage}
    parent = parent_run(client, exp_id, f"study:{spec.study}", spec.study, tags=base_tags,
                        match={TAG_KIND: KIND_STUDY, TAG_STORAGE: result.storage})
    parent_id = parent.info.run_id
    children = client.search_runs(
        [exp_id], filter_string=f"tags.`{TAG_PARENT_RUN}` = '{parent_id}'", max_results=50_000
    )
    logged = {r.data.tags.get(TAG_TRIAL) for r in children}
    now = int(time.time() * 1000)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if str(t.number) in logged:
            continue
        ts = int(t.datetime_complete.timestamp() * 1000) if t.datetime_complete else now
        params = {**t.params, **{k: v for k, v in t.user_attrs.items() if k in ("lam", "lam_lo", "lam_hi")}}
        child = client.create_run(
            exp_id,
            run_name=trial_run_name(t.number, params),
            start_time=int(t.datetime_start.timestamp() * 1000) if t.datetime_start else ts,
            tags={TAG_PARENT_RUN: parent_id, TAG_TRIAL: str(t.number), TAG_STUDY: spec.study, TAG_TUNE_ON: spec.tune_on},
        )
        client.log_batch(
            child.info.run_id,
            metrics=[Metric(metric_key, 100.0 * float(t.value), ts, 0)],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(child.info.run_id, end_time=ts)
    flat = {f"best_{k}": v for k, v in result.best_params.items()}
    tags = {
        TAG_TUNE_ON: spec.tune_on,
        "split": result.split,
        "source_run": result.extras.get("source_run", ""),
        "lam_mode": "exact" if spec.space.exact_lambda else "sampled",
    }
    if spec.tune_on == "reported":
        tags["tuned_on_reported_split"] = "true"
    client.log_batch(
        parent_id,
        metrics=[
            Metric(f"best_{spec.objective}", 100.0 * result.best_value, now, 0),
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


def trial_run_name(number: int, params: dict[str, Any]) -> str:
    """``#7 k=3 lam=0.42``: a trial's run named by its parameters (numbers rounded)."""
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    shown = {k: v for k, v in params.items() if k not in ("lam_lo", "lam_hi")}
    return f"#{number} " + " ".join(f"{k}={fmt(v)}" for k, v in sorted(shown.items()))


def study_storage_url(results: str | Path, study: str) -> str:
    """What ``optuna-dashboard`` opens for a study under ``<results>/studies/<study>``: the storage of
    its ``best.json``, else its SQLite file or journal (``make optuna-dashboard STUDY=...``)."""
    import json

    folder = Path(results) / "studies" / study
    try:
        storage = json.loads((folder / "best.json").read_text()).get("storage")
    except (OSError, ValueError):
        storage = None
    if not storage:
        journal, db = folder / "journal.log", folder / "optuna.db"
        storage = f"journal:{journal.resolve()}" if journal.exists() else f"sqlite:///{db.resolve()}"
    return storage[len("journal:"):] if storage.startswith("journal:") else storage


def _param_logged(run: Any, key: str) -> bool:
    return key in (run.data.params or {})
