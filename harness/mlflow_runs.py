"""MLflow names and set-up shared by runs and tables (:mod:`harness.tracking`) and studies
(:mod:`harness.tuning.mlflow_log`): the tag names, where an experiment keeps its artifacts, and the
get-or-create of an experiment and of a parent run.

A parent run is found by its :data:`TAG_PARENT_KEY` tag (``<spec>:<scale>`` for a spec's runs,
``study:<study>`` for an Optuna study), so that re-running a command never duplicates it; its children
point at it with :data:`TAG_PARENT_RUN`. ``mlflow`` itself is imported by the callers (this module
only talks to the client they pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

# ------------------------------------------------------------------------------------------ tag names
#: MLflow's own: the parent run of a child run.
TAG_PARENT_RUN = "mlflow.parentRunId"
#: MLflow's own: the git commit of the code that ran.
TAG_GIT_COMMIT = "mlflow.source.git.commit"
#: What finds a parent run again (``<spec>:<scale>``, ``study:<study>``).
TAG_PARENT_KEY = "bikebench.parent_key"
#: What kind of parent a run is (``study`` for an Optuna study).
TAG_KIND = "bikebench.kind"
# Runs of a spec (one child per run directory).
TAG_RUN_ID = "bikebench.run_id"
TAG_METRIC_LINES = "bikebench.metric_lines"
TAG_RESULT_LOGGED = "bikebench.result_logged"
TAG_STATE = "bikebench.state"
TAG_SPEC = "bikebench.spec"
TAG_SPEC_SHA = "bikebench.spec_sha"
TAG_VARIANT = "bikebench.variant"
TAG_SCALE = "bikebench.scale"
TAG_STAGE = "bikebench.stage"
TAG_PROFILE = "bikebench.profile"
TAG_PROTOCOL = "bikebench.protocol"
TAG_VIEWS = "bikebench.views"
TAG_BACKBONE = "bikebench.backbone"
TAG_GIT_DIRTY = "bikebench.git_dirty"
TAG_JOB_ID = "bikebench.job_id"
TAG_CLUSTER = "bikebench.cluster"
# Optuna studies (a parent per study, a child per trial).
TAG_STUDY = "optuna_study"
TAG_STORAGE = "optuna_storage"
TAG_TRIAL = "optuna_trial"
TAG_TUNE_ON = "tune_on"

#: The kind of a study's parent run (:data:`TAG_KIND`).
KIND_STUDY = "study"


def artifact_location(tracking_uri: str, results: str | Path, experiment: str) -> Optional[str]:
    """Absolute ``<results>/mlartifacts/<experiment>`` for local stores (MLflow 3 needs it absolute);
    a tracking server chooses its own (None)."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return (Path(results).resolve() / "mlartifacts" / experiment).as_uri()


def experiment_id(client: Any, name: str, location: Optional[str] = None) -> str:
    """The id of the experiment ``name``, created (artifacts at ``location``) on first use."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=location)
    return exp.experiment_id


def parent_run(
    client: Any,
    experiment: str,
    key: str,
    run_name: str,
    tags: Optional[Mapping[str, str]] = None,
    match: Optional[Mapping[str, str]] = None,
) -> Any:
    """The parent run (an MLflow ``Run``) tagged ``TAG_PARENT_KEY = key`` in experiment id ``experiment``
    whose tags also equal ``match``; created with ``tags`` when there is none."""
    found = client.search_runs(
        [experiment], filter_string=f"tags.`{TAG_PARENT_KEY}` = '{key}'", max_results=50 if match else 1
    )
    for run in found:
        if all(run.data.tags.get(k) == v for k, v in (match or {}).items()):
            return run
    return client.create_run(experiment, run_name=run_name, tags={TAG_PARENT_KEY: key, **dict(tags or {})})
