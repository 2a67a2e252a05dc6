"""MLflow names and set-up shared by runs and tables (:mod:`harness.tracking`) and studies
(:mod:`harness.tuning.mlflow_log`): the tag names, where an experiment keeps its artifacts, and the
get-or-create of an experiment and of a parent run, the merge of runs that claim one identity, and
where a tracking store's lock file lives (:func:`store_lock_path`: every writer of a store takes it, so
two processes never create one run twice nor race on a new SQLite file's schema).

A parent run is found by its :data:`TAG_PARENT_KEY` tag (``<spec>:<scale>`` for a spec's runs,
``study:<study>`` for an Optuna study), so that re-running a command never duplicates it; its children
point at it with :data:`TAG_PARENT_RUN`. ``mlflow`` itself is imported by the callers (this module
only talks to the client they pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlparse

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
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - created meanwhile by a writer that does not take the store lock?
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    return exp.experiment_id


#: Oldest first: of two runs that claim one identity (a race before the store lock existed, or two
#: results directories logging into one server) the first created is the one kept.
OLDEST_FIRST = ["attributes.start_time ASC", "attributes.run_id ASC"]


def parent_run(
    client: Any,
    experiment: str,
    key: str,
    run_name: str,
    tags: Optional[Mapping[str, str]] = None,
    match: Optional[Mapping[str, str]] = None,
) -> Any:
    """The parent run (an MLflow ``Run``) tagged ``TAG_PARENT_KEY = key`` in experiment id ``experiment``
    whose tags also equal ``match`` (the oldest, when there are several); created with ``tags`` when
    there is none."""
    found = client.search_runs(
        [experiment], filter_string=f"tags.`{TAG_PARENT_KEY}` = '{key}'", max_results=50 if match else 1,
        order_by=OLDEST_FIRST,
    )
    for run in found:
        if all(run.data.tags.get(k) == v for k, v in (match or {}).items()):
            return run
    return client.create_run(experiment, run_name=run_name, tags={TAG_PARENT_KEY: key, **dict(tags or {})})


def merge_duplicates(client: Any, experiment: str, runs: Sequence[Any]) -> list[str]:
    """Keep the oldest of ``runs`` (MLflow runs of one identity in experiment id ``experiment``): the
    children of the others are moved under it and the others are deleted. Returns the deleted ids."""
    if len(runs) < 2:
        return []
    keep, *others = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
    deleted = []
    for other in others:
        token = None
        while True:
            page = client.search_runs([experiment], filter_string=f"tags.`{TAG_PARENT_RUN}` = '{other.info.run_id}'",
                                      max_results=1000, page_token=token)
            for child in page:
                client.set_tag(child.info.run_id, TAG_PARENT_RUN, keep.info.run_id)
            token = page.token
            if not token:
                break
        client.delete_run(other.info.run_id)
        deleted.append(other.info.run_id)
    return deleted


# ------------------------------------------------------------------------------------------ store lock
def store_lock_path(tracking_uri: str, results: str | Path) -> Path:
    """The lock file of a tracking store: ``<db>.lock`` next to a SQLite file, ``<dir>/.bikebench.lock``
    in a file store, ``<results>/.mlflow.lock`` for a server (which cannot be locked from here: two
    results directories logging into one server are reconciled by merging duplicates instead)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):] + ".lock")
    if tracking_uri.startswith("file:"):
        return Path(urlparse(tracking_uri).path) / ".bikebench.lock"
    if "://" not in tracking_uri:
        return Path(tracking_uri) / ".bikebench.lock"
    return Path(results).resolve() / ".mlflow.lock"
