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
#: MLflow's own: the run's description (Markdown), shown on the run's page.
TAG_NOTE = "mlflow.note.content"
#: Zero-padded position of the run's variant in its spec: sorting by it gives the table's order.
TAG_ORDER = "bikebench.order"
#: The table cells a run fills (``6a/mean_pool/top1, 6i/vit_b32/baseline``) and their tables (``6a,6i``).
TAG_CELLS = "bikebench.cells"
TAG_TABLES = "bikebench.tables"
#: Every variant of the spec that resolves to this run (one run directory, one child run).
TAG_VARIANTS = "bikebench.variants"
#: The variant's description in the spec.
TAG_DESCRIPTION = "bikebench.description"
#: ``init_from``: the run id of the run directory it starts from, and that run's MLflow run id.
TAG_INIT_FROM = "bikebench.init_from"
TAG_INIT_FROM_RUN = "bikebench.init_from_mlflow_run"
#: Signature of the files of ``<run_dir>/figures/`` last logged as artifacts (re-logged when it changes).
TAG_FIGURES = "bikebench.figures"
#: The git commit of the harness that made a parent (table) run.
TAG_TABLE_COMMIT = "bikebench.table_commit"
# Optuna studies (a parent per study, a child per trial).
TAG_STUDY = "optuna_study"
TAG_STORAGE = "optuna_storage"
TAG_TRIAL = "optuna_trial"
TAG_TUNE_ON = "tune_on"

#: The kind of a study's parent run (:data:`TAG_KIND`).
KIND_STUDY = "study"
#: The kind of a spec's / table's parent run.
KIND_TABLE = "table"

# ------------------------------------------------------------------------------------ metric names
#: The one home of MLflow metric names. A run's headline numbers (``result.json``) are logged once
#: each, at step 0 (MLflow then draws bars), in percent, named ``<split>/<metric>`` with the branch
#: in the name: ``val/video_top1``, ``val/attr_top1``, ``val/fused_top1``, ... The unbranched aliases
#: of ``result.json`` (``top1`` is the fused number of a run with attributes, the video number of one
#: without) are left out where a branched name exists. Counts stay in ``result.json``.
HEADLINE_STEP = 0
#: ``result.json`` metric names that are aliases of a branched one (``top1`` = ``fused_top1`` or ``video_top1``).
METRIC_ALIASES = ("top1", "top5", "mean_class")
#: Per-line curves of ``metrics.jsonl``: ``train/<key>`` at the line's step; validation lines
#: (``kind: val``, once per epoch) ``epochs/<split>/<key>``, so that they never mix with the headline.
CURVE_PREFIX = {"train": "train", "val": "epochs"}
#: ``metrics.jsonl`` kinds not logged (``final`` repeats result.json, logged as the headline).
SKIPPED_LINE_KINDS = ("final",)


def headline_name(split: str, metric: str) -> str:
    """``val/video_top1``: the MLflow name of ``metric`` of ``split``."""
    return f"{split}/{metric}"


def headline_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of a ``result.json``: every split's metrics (``splits``; else ``metrics``
    under ``split``) as ``<split>/<metric>``, the unbranched aliases left out (:data:`METRIC_ALIASES`),
    NaN (null) left out."""
    splits = result.get("splits")
    if not isinstance(splits, Mapping) or not splits:
        metrics = result.get("metrics")
        splits = {str(result.get("split") or "val"): metrics} if isinstance(metrics, Mapping) else {}
    out: dict[str, float] = {}
    for split, metrics in splits.items():
        if not isinstance(metrics, Mapping):
            continue
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                continue
            if key in METRIC_ALIASES and any(str(k).endswith("_" + key) for k in metrics):
                continue
            out[headline_name(str(split), str(key))] = float(value)
    return out


def cell_metric_name(table: str, row: str, column: str) -> str:
    """A table cell as a metric of the table's parent run: ``6a/mean_pool/top1`` (ours)."""
    return f"{table}/{row}/{column}"


def cell_delta_name(table: str, row: str, column: str) -> str:
    """Ours minus the paper of a cell: ``6a/mean_pool/top1/delta``."""
    return f"{cell_metric_name(table, row, column)}/delta"


def study_metric_name(split: str, objective: str) -> str:
    """A study trial's metric: the objective on the tuning split, in percent (``tune/fused_top1``)."""
    return headline_name(split, objective)


def runs_view_link(base_url: str, experiment_id: Optional[str] = None) -> str:
    """The MLflow 3 page that lists the runs (not the GenAI overview): ``workflowType=machine_learning``,
    runs sorted in the table's order (:data:`TAG_ORDER`)."""
    base = base_url.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&orderByKey=tags.%60{TAG_ORDER}%60&orderByAsc=true")


def artifact_location(tracking_uri: str, results: str | Path, experiment: str) -> Optional[str]:
    """Absolute ``<results>/mlartifacts/<experiment>`` for local stores (MLflow 3 needs it absolute;
    ``bikebench sync --rebase`` rewrites them when ``results/`` moved: :func:`harness.tracking.rebase_store`);
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
    legacy_match: bool = False,
) -> Any:
    """The parent run (an MLflow ``Run``) tagged ``TAG_PARENT_KEY = key`` in experiment id ``experiment``
    whose tags also equal ``match`` (the oldest, when there are several); created with ``tags`` when
    there is none. ``legacy_match``: a run without a tag of ``match`` (written before it existed) matches
    too, and gets the tag."""
    found = client.search_runs(
        [experiment], filter_string=f"tags.`{TAG_PARENT_KEY}` = '{key}'", max_results=50 if match else 1,
        order_by=OLDEST_FIRST,
    )
    for run in found:
        if all(run.data.tags.get(k, v if legacy_match else None) == v for k, v in (match or {}).items()):
            for k, v in (match or {}).items():
                if k not in run.data.tags:
                    client.set_tag(run.info.run_id, k, v)
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
