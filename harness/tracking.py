"""MLflow bookkeeping, replayed from run directories (the source of truth) by the driver.

* One experiment per spec; one parent run per (spec, scale) — reused by every invocation, found by
  its ``bikebench.parent_key`` tag (tag names and the experiment/parent set-up: :mod:`harness.mlflow_runs`,
  shared with the studies' logging); one child run per run directory, found by its
  ``bikebench.run_id`` tag, so re-running a command or ``bikebench sync`` never duplicates a run.
* Params: the flattened RunConfig (values truncated to MLflow's limit). Metrics: every line of
  ``metrics.jsonl`` (only the lines not yet logged: the count is kept in a tag), named
  ``<kind>/<key>`` when the line has a ``kind`` (train / validate / final), and the numbers of
  ``result.json`` (dotted: ``metrics.fused_top1``), sent with ``log_batch``; names lose characters
  MLflow rejects (``@``).
  Tags: run id, spec and its hash, git commit + dirty flag, scale, profile, views, protocol,
  cluster job id. Artifacts: config.yaml, meta.json, result.json.
* Jobs never talk to MLflow (many SLURM jobs on one SQLite file corrupt it); a job that ran while
  MLflow was down loses nothing, since :func:`sync` replays whatever MLflow lacks.
* One writer at a time: :meth:`Tracker.locked` holds the store's lock file
  (:func:`harness.mlflow_runs.store_lock_path`) while the store is opened (a new SQLite file's schema
  is created then) and runs are looked up and logged, so two drivers or two ``bikebench sync`` never
  create a run twice. Runs that claim one identity anyway (a store written before the lock, or two
  results directories logging into one server) are merged: the oldest is kept, the others deleted.
* Faults: a run MLflow rejects (a name too long, ...) is reported in :attr:`SyncReport.failed` and the
  others are still logged; a store that cannot be used at all raises :class:`TrackingError` (one line):
  a server that does not answer a ``/health`` probe within :data:`PROBE_TIMEOUT_S`, or a SQLite file
  still locked by another program after MLflow's own 20 s wait and :data:`LOCK_RETRIES` more tries.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from bike.rundir import CONFIG_FILE, FIGURES_DIR, META_FILE  # noqa: E402
from harness.mlflow_runs import (  # noqa: E402  (the tag names, shared with the studies' logging)
    CURVE_PREFIX,
    HEADLINE_STEP,
    KIND_TABLE,
    SKIPPED_LINE_KINDS,
    TAG_BACKBONE,
    TAG_CELLS,
    TAG_DESCRIPTION,
    TAG_FIGURES,
    TAG_INIT_FROM,
    TAG_INIT_FROM_RUN,
    TAG_KIND,
    TAG_NOTE,
    TAG_ORDER,
    TAG_TABLE_COMMIT,
    TAG_TABLES,
    TAG_VARIANTS,
    TAG_CLUSTER,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_JOB_ID,
    TAG_METRIC_LINES,
    TAG_PARENT_KEY,
    TAG_PARENT_RUN,
    TAG_PROFILE,
    TAG_PROTOCOL,
    TAG_RESULT_LOGGED,
    TAG_RUN_ID,
    TAG_SCALE,
    TAG_SPEC,
    TAG_SPEC_SHA,
    TAG_STAGE,
    TAG_STATE,
    TAG_VARIANT,
    TAG_VIEWS,
)
from harness.mlflow_runs import OLDEST_FIRST, headline_metrics, merge_duplicates, store_lock_path  # noqa: E402
from harness.mlflow_runs import artifact_location as _artifact_location  # noqa: E402
from harness.mlflow_runs import cell_delta_name, cell_metric_name  # noqa: E402
from harness.mlflow_runs import experiment_id as _experiment_id  # noqa: E402
from harness.mlflow_runs import parent_run as _parent_run  # noqa: E402
from bike.rundir import file_lock  # noqa: E402
from harness.rundir import RunDir, list_run_dirs  # noqa: E402

STATUS_OF_STATE = {"done": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
#: What :meth:`Tracker.log_run_dir` returns for a run whose job has not started (no child run yet).
NOT_STARTED = "not-started"
# MLflow limits (mlflow.utils.validation): kept here so that the module imports mlflow lazily.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
MAX_TAG_VALUE = 8000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
_BAD_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
#: Seconds a tracking server gets to answer ``GET /health`` before it counts as unreachable.
PROBE_TIMEOUT_S = 5.0
#: Extra tries of a call that found the SQLite store locked (each after MLflow's own 20 s busy wait);
#: ``$BIKEBENCH_MLFLOW_LOCK_RETRIES`` overrides it.
LOCK_RETRIES = 2
#: HTTP retries/timeout of the MLflow client for a server (MLflow's defaults wait minutes on a dead
#: one); set only where the environment does not set them.
HTTP_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingError(RuntimeError):
    """The tracking store cannot be used at all (server unreachable, SQLite file locked): one line,
    nothing of the run directories is lost (``bikebench sync`` replays them later)."""


def one_line(text: Any, limit: int = 300) -> str:
    """The first line of ``text`` with every word over 80 characters shortened (MLflow quotes the
    whole rejected value, e.g. a 5,000-character name), at most ``limit`` characters."""
    lines = str(text).strip().splitlines()
    first = lines[0] if lines else ""
    first = re.sub(r"\S{81,}", lambda m: f"{m.group()[:40]}...({len(m.group())} chars)", first)
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    node: Optional[BaseException] = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def _is_locked(exc: BaseException) -> bool:
    return any("database is locked" in str(e) for e in _causes(exc))


def _connection_fault(exc: BaseException) -> Optional[str]:
    """Why a request never reached the server (refused, timed out, no such host), else None."""
    import requests

    for e in _causes(exc):
        text = str(e)
        if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError)) or "Max retries exceeded" in text:
            errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
            if errno:
                return errno.group(1).strip()
            if isinstance(e, requests.Timeout) or "timed out" in text.lower():
                return "timed out"
            return type(e).__name__
    return None


class _QuietLocked(logging.Filter):
    """Drops MLflow's logged traceback of a locked SQLite file: :class:`StoreClient` retries the call
    and reports the lock in one line itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and _is_locked(exc))


_QUIET_LOCKED = _QuietLocked()


def lock_retries() -> int:
    value = os.environ.get("BIKEBENCH_MLFLOW_LOCK_RETRIES", "")
    return int(value) if value.isdigit() else LOCK_RETRIES


class StoreClient:
    """The ``MlflowClient`` of one tracking URI, created on first use (after probing a server), whose
    calls are tried again while a SQLite store is locked; a store that stays locked or a server that
    cannot be reached raises :class:`TrackingError`."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client: Any = None
        logging.getLogger("mlflow.store.db.utils").addFilter(_QUIET_LOCKED)  # once: the same filter object

    def _open(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.uri.startswith(("http://", "https://")):
                self.probe()
                for key, value in HTTP_CLIENT_ENV.items():
                    os.environ.setdefault(key, value)
            self._client = self.call(lambda: MlflowClient(tracking_uri=self.uri))
        return self._client

    def probe(self) -> None:
        """``GET <server>/health`` within :data:`PROBE_TIMEOUT_S`; any answer will do."""
        import requests

        try:
            requests.get(self.uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S)
        except requests.RequestException as exc:
            reason = _connection_fault(exc) or one_line(exc, 120)
            raise TrackingError(f"MLflow tracking server {self.uri} is unreachable ({reason})") from None

    def call(self, fn: Any) -> Any:
        tries = 1 + lock_retries()
        start = time.monotonic()
        for attempt in range(tries):
            try:
                return fn()
            except TrackingError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below; anything else goes to the caller
                if _is_locked(exc):
                    if attempt + 1 < tries:
                        time.sleep(min(2.0**attempt, 5.0))
                        continue
                    raise TrackingError(
                        f"MLflow store {self.uri} is locked by another program (database is locked; "
                        f"{tries} {'try' if tries == 1 else 'tries'} over {time.monotonic() - start:.0f} s)") from None
                reason = _connection_fault(exc)
                if reason is not None:
                    raise TrackingError(f"MLflow tracking server {self.uri} is unreachable ({reason})") from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._open(), name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self.call(lambda: attr(*args, **kwargs))


def default_tracking_uri(results: str | Path) -> str:
    """``sqlite:///<abs results>/mlflow.db``."""
    return f"sqlite:///{(Path(results).resolve() / 'mlflow.db')}"


def resolve_tracking_uri(uri: Optional[str], results: str | Path) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite file under results."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(results)


def metric_name(name: str) -> str:
    """A metric name MLflow accepts (``top@1`` → ``top_1``), at most 250 characters."""
    return _BAD_NAME.sub("_", str(name))[:MAX_KEY]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested mapping → dotted ``(key, leaf)`` pairs (lists are leaves)."""
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from flatten(value, path)
        else:
            yield path, value


def numeric_items(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The finite-or-not numbers of a nested mapping (booleans excluded)."""
    for key, value in flatten(tree, prefix):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, float(value)


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """Flattened RunConfig as MLflow params: values JSON-encoded when not scalar, truncated."""
    out = {}
    for key, value in flatten(config):
        text = value if isinstance(value, str) else json.dumps(value)
        out[key[:MAX_KEY]] = text[:MAX_PARAM_VALUE]
    return out


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _file_sha(path: Optional[str]) -> Optional[str]:
    try:
        return hashlib.sha256(Path(str(path)).read_bytes()).hexdigest()[:12]
    except (OSError, TypeError):
        return None


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # run dirs with no spec to log them under
    #: ``<run_id> (<spec>.<variant>): <why>`` for each run MLflow did not take (the others are logged)
    failed: list[str] = field(default_factory=list)
    #: run ids (and ``parent <spec>:<scale>``) whose duplicate MLflow runs were merged into one
    merged: list[str] = field(default_factory=list)
    #: run ids whose job has not started yet (their child run is created when it starts)
    not_started: list[str] = field(default_factory=list)
    #: one line each: what a reader of the store should know (artifacts missing after a move, ...)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = (f"{len(self.created)} created, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged, {len(self.skipped)} without a spec")
        if self.not_started:
            text += f", {len(self.not_started)} not started"
        if self.merged:
            text += f", {len(self.merged)} with duplicates merged"
        if self.failed:
            text += f", {len(self.failed)} failed"
        return text


class Tracker:
    """An MLflow client bound to one results directory."""

    def __init__(self, results: str | Path, tracking_uri: Optional[str] = None):
        self.results = Path(results).resolve()
        self.results.mkdir(parents=True, exist_ok=True)
        self.uri = resolve_tracking_uri(tracking_uri, self.results)
        self.client: Any = StoreClient(self.uri)  # opened on first use (inside :meth:`locked`)
        self._experiments: dict[str, str] = {}
        self._children: dict[str, dict[str, Any]] = {}  # experiment id -> {run_id tag: mlflow Run}
        self._lock_depth = 0
        self.merged: list[str] = []  # what merging duplicates found, for the report
        self._specs: dict[str, Any] = {}  # spec name -> loaded Spec (or None), for run names and cells
        self._described: set[str] = set()  # experiments whose description was set by this tracker

    @property
    def lock_path(self) -> Path:
        return store_lock_path(self.uri, self.results)

    @contextlib.contextmanager
    def locked(self) -> Iterator["Tracker"]:
        """Hold the store's lock (re-entrant within this tracker); what was looked up before is
        looked up again, since another process may have logged meanwhile."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        with file_lock(self.lock_path):
            self._lock_depth = 1
            self._children.clear()
            try:
                yield self
            finally:
                self._lock_depth = 0

    # -------------------------------------------------------------- experiments and parents
    def artifact_location(self, experiment: str) -> Optional[str]:
        """Absolute ``<results>/mlartifacts/<experiment>`` for local stores; servers choose their own."""
        return _artifact_location(self.uri, self.results, experiment)

    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            self._experiments[name] = _experiment_id(self.client, name, self.artifact_location(name))
        return self._experiments[name]

    def parent_run(self, spec: str, scale: str, tags: Optional[Mapping[str, str]] = None) -> str:
        """The parent run of (spec, scale) at this checkout's git commit (:data:`TAG_TABLE_COMMIT`: two
        commits give two parents, to compare), created on first use; its MLflow run id. Duplicate
        parents of one commit are merged into the oldest (a parent without the tag counts as this commit's)."""
        exp_id, key = self.experiment_id(spec), f"{spec}:{scale}"
        commit = harness_commit()
        with self.locked():
            found = self.client.search_runs([exp_id], filter_string=f"tags.`{TAG_PARENT_KEY}` = '{key}'",
                                            max_results=50, order_by=OLDEST_FIRST)
            same = [r for r in found if r.data.tags.get(TAG_TABLE_COMMIT, commit) == commit]
            if len(same) > 1 and merge_duplicates(self.client, exp_id, same):
                self.merged.append(f"parent {key}")
                self._children.pop(exp_id, None)  # the children now point at the kept parent
            run = _parent_run(self.client, exp_id, key, f"{spec} ({scale}{', ' + commit[:8] if commit else ''})",
                              tags={TAG_SPEC: spec, TAG_SCALE: scale, TAG_KIND: KIND_TABLE, TAG_TABLE_COMMIT: commit,
                                    **dict(tags or {})},
                              match={TAG_TABLE_COMMIT: commit} if commit else None, legacy_match=True)
        return run.info.run_id

    def start_parent(self, spec: str, scale: str) -> str:
        """The parent of (spec, scale), marked running (a table is being made)."""
        with self.locked():
            parent = self.parent_run(spec, scale)
            if self.client.get_run(parent).info.status != "RUNNING":
                self.client.update_run(parent, status="RUNNING")
        return parent

    def finish_parent_if_done(self, spec: str, scale: str, parent: str) -> None:
        """Ends the parent when every child under it has ended (``bikebench run``/``sync`` of a spec
        without a table), at the last child's end; a parent with an unfinished child is running."""
        exp_id = self.experiment_id(spec)
        kids = self.client.search_runs([exp_id], filter_string=f"tags.`{TAG_PARENT_RUN}` = '{parent}'", max_results=1000)
        if not kids:
            return
        info = self.client.get_run(parent).info
        if all(k.info.status != "RUNNING" for k in kids):
            if info.status == "RUNNING":
                failed = any(k.info.status in ("FAILED", "KILLED") for k in kids)
                end = max((k.info.end_time or 0) for k in kids) or None
                self.client.set_terminated(parent, status="FAILED" if failed else "FINISHED", end_time=end)
        elif info.status != "RUNNING":
            self.client.update_run(parent, status="RUNNING")

    def children(self, experiment_id: str) -> dict[str, Any]:
        """Child runs of an experiment by their ``bikebench.run_id`` tag (one search per experiment);
        several runs of one run id are merged into the oldest (:func:`harness.mlflow_runs.merge_duplicates`),
        whose missing metric lines the next :meth:`log_run_dir` adds from the run directory."""
        if experiment_id not in self._children:
            runs: dict[str, list[Any]] = {}
            token = None
            while True:
                page = self.client.search_runs(
                    [experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` != ''", max_results=1000, page_token=token,
                    order_by=OLDEST_FIRST,
                )
                for run in page:
                    runs.setdefault(run.data.tags[TAG_RUN_ID], []).append(run)
                token = page.token
                if not token:
                    break
            for run_id, same in runs.items():
                if len(same) > 1:
                    with self.locked():
                        merge_duplicates(self.client, experiment_id, same)
                    self.merged.append(run_id)
            self._children[experiment_id] = {run_id: same[0] for run_id, same in runs.items()}
        return self._children[experiment_id]

    # -------------------------------------------------------------- one run directory
    def log_run_dir(self, rd: RunDir, spec: str, variant: str, scale: str, parent_id: Optional[str] = None) -> str:
        """Create or update the child run of ``rd`` under (spec, scale); returns created/updated/unchanged,
        or ``not-started`` for a run whose job has not started yet (its child is created when it starts)."""
        with self.locked():
            return self._log_run_dir(rd, spec, variant, scale, parent_id)

    def _log_run_dir(self, rd: RunDir, spec: str, variant: str, scale: str, parent_id: Optional[str]) -> str:
        from mlflow.entities import Metric, Param, RunTag

        state = rd.state()
        times = job_times(rd)
        exp_id = self.experiment_id(spec)
        children = self.children(exp_id)
        existing = children.get(rd.run_id)
        if existing is None and times[0] is None and state not in STATUS_OF_STATE:
            return NOT_STARTED
        parent_id = parent_id or self.parent_run(spec, scale)
        meta = rd.read_meta() or {}
        outcome = "unchanged"
        config = _read_yaml(rd.config_path)
        new_tags: list[Any] = []
        if existing is None:
            about = self.describe(meta, spec, variant)
            if about.spec_description and exp_id not in self._described:
                exp = self.client.get_experiment(exp_id)
                if exp.tags.get(TAG_NOTE) != about.spec_description:  # the experiment says what its spec is
                    self.client.set_experiment_tag(exp_id, TAG_NOTE, about.spec_description[:MAX_TAG_VALUE])
                self._described.add(exp_id)
            run = self.client.create_run(exp_id, run_name=about.name, start_time=times[0],
                                         tags=self._tags(rd, meta, config, spec, variant, scale, parent_id, about))
            params = [Param(k, v) for k, v in config_params(config).items()]
            for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run.info.run_id, params=list(chunk))
            for name in (CONFIG_FILE, META_FILE):
                if (rd.path / name).exists():
                    self.client.log_artifact(run.info.run_id, str(rd.path / name))
            run_id, tags = run.info.run_id, dict(run.data.tags)
            outcome = "created"
        else:
            run_id, tags = existing.info.run_id, dict(existing.data.tags)
            if tags.get(TAG_PARENT_RUN) != parent_id:  # the latest table that uses the run holds it
                new_tags.append(RunTag(TAG_PARENT_RUN, parent_id))

        # init_from: a link to the MLflow run it starts from (logged before it, in any experiment of the store)
        init = config.get("init_from") if isinstance(config, Mapping) else None
        if init and not tags.get(TAG_INIT_FROM_RUN):
            source_id = Path(str(init)).name
            source = self.child_anywhere(source_id)
            if source is not None:
                link = f"#/experiments/{source.info.experiment_id}/runs/{source.info.run_id}"
                note = tags.get(TAG_NOTE, "")
                name = source.data.tags.get("mlflow.runName", source_id)
                new_tags += [RunTag(TAG_INIT_FROM, source_id), RunTag(TAG_INIT_FROM_RUN, source.info.run_id),
                             RunTag(TAG_NOTE, (note + f"\n\nStarts from: [{name}]({link}) (run `{source_id}`)")[:MAX_TAG_VALUE])]

        # metrics.jsonl: only the lines not logged yet; curves at their steps (train/..., epochs/<split>/...)
        rows = list(rd.metrics())
        done_lines = int(tags.get(TAG_METRIC_LINES, "0") or 0)
        metrics = []
        now = int(time.time() * 1000)
        for index, row in enumerate(rows[done_lines:], start=done_lines):
            kind = row.get("kind")
            if kind in SKIPPED_LINE_KINDS:
                continue
            step = row.get("step", index)
            step = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else index
            stamp = row.get("time")
            ts = int(float(stamp) * 1000) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else now
            prefix = curve_prefix(row)
            for key, value in numeric_items(row):
                if key in ("step", "time"):
                    continue
                metrics.append(Metric(metric_name(prefix + key), value, ts, step))
        if len(rows) != done_lines:
            new_tags.append(RunTag(TAG_METRIC_LINES, str(len(rows))))
        result = rd.result() if state == "done" else None
        if result is not None and tags.get(TAG_RESULT_LOGGED) != "1":
            stamp = times[1] or now
            for key, value in headline_metrics(result).items():
                metrics.append(Metric(metric_name(key), value, stamp, HEADLINE_STEP))
            new_tags.append(RunTag(TAG_RESULT_LOGGED, "1"))
            self.client.log_artifact(run_id, str(rd.result_path))
        figures = rd.path / FIGURES_DIR
        signature = files_signature(figures)
        if signature and tags.get(TAG_FIGURES) != signature:
            self.client.log_artifacts(run_id, str(figures), FIGURES_DIR)
            new_tags.append(RunTag(TAG_FIGURES, signature))
        sub = rd.last_submission() or {}
        if sub.get("job_id") and tags.get(TAG_JOB_ID) != str(sub["job_id"]):
            new_tags += [RunTag(TAG_JOB_ID, str(sub["job_id"])), RunTag(TAG_CLUSTER, str(sub.get("cluster", "")))]
        if tags.get(TAG_STATE) != state:
            new_tags.append(RunTag(TAG_STATE, state))
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=list(chunk))
        if new_tags:
            self.client.log_batch(run_id, tags=new_tags)
        if tags.get(TAG_STATE) != state:
            if state in STATUS_OF_STATE:
                self.client.set_terminated(run_id, status=STATUS_OF_STATE[state], end_time=times[1])
            elif existing is not None and existing.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")  # requeued / resumed after a failure
        if outcome == "unchanged" and (metrics or new_tags):
            outcome = "updated"
        if outcome != "unchanged":
            children[rd.run_id] = self.client.get_run(run_id)
        return outcome

    def child_anywhere(self, run_id: str) -> Any:
        """The child run of a run directory in any experiment of the store (None when not logged)."""
        for children in self._children.values():
            if run_id in children:
                return children[run_id]
        found = self.client.search_runs(self.client_experiment_ids(), filter_string=f"tags.`{TAG_RUN_ID}` = '{run_id}'",
                                        max_results=1, order_by=OLDEST_FIRST)
        return found[0] if found else None

    def client_experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.client.search_experiments()]

    def describe(self, meta: Mapping[str, Any], spec: str, variant: str) -> "RunAbout":
        """Name, order, description and cells of the child run of ``spec.variant`` (from the spec file)."""
        return describe_variant(meta, spec, variant, self._specs)

    def _tags(self, rd: RunDir, meta: Mapping[str, Any], config: Mapping[str, Any], spec: str, variant: str,
              scale: str, parent_id: str, about: "RunAbout") -> dict[str, str]:
        code = meta.get("code") or {}
        ev = config.get("eval", {}) if isinstance(config, Mapping) else {}
        tags = {
            TAG_RUN_ID: rd.run_id,
            TAG_PARENT_RUN: parent_id,
            TAG_SPEC: spec,
            TAG_VARIANT: variant,
            TAG_VARIANTS: ", ".join(about.variants),
            TAG_ORDER: about.order,
            TAG_CELLS: ", ".join(about.cells),
            TAG_TABLES: ",".join(about.tables),
            TAG_DESCRIPTION: about.description,
            TAG_NOTE: about.note(rd.run_id),
            TAG_SCALE: scale,
            TAG_STAGE: str(config.get("stage", "")),
            TAG_PROFILE: str(config.get("profile", "")),
            TAG_PROTOCOL: str(ev.get("protocol", "")),
            TAG_VIEWS: f"{ev.get('clips', 1)}x{ev.get('crops', 1)}",
            TAG_BACKBONE: str(config.get("model", {}).get("backbone", "")),
            TAG_GIT_COMMIT: str(code.get("commit") or ""),
            TAG_GIT_DIRTY: str(code.get("dirty")),
        }
        spec_sha = _file_sha(meta.get("spec_path"))
        if spec_sha:
            tags[TAG_SPEC_SHA] = spec_sha
        return {k[:MAX_KEY]: v[:MAX_TAG_VALUE] for k, v in tags.items()}

    # -------------------------------------------------------------- many runs
    def log_plan_runs(self, entries: Iterable[tuple[RunDir, str, str, str]], finish_parents: bool = True) -> SyncReport:
        """Log ``(run_dir, spec, variant, scale)`` entries; one parent per (spec, scale), all under the
        store's lock. A run MLflow rejects is reported in ``failed`` and the others are logged; a store
        that cannot be used at all raises :class:`TrackingError`. A run whose job has not started is
        left out (``not_started``). Parents end when all their children have (``finish_parents``; the
        driver's streaming while jobs run leaves them running)."""
        report = SyncReport()
        parents: dict[tuple[str, str], str | Exception] = {}
        seen: set[tuple[str, str, str]] = set()
        with self.locked():
            self.merged = []
            for rd, spec, variant, scale in entries:
                if (rd.run_id, spec, scale) in seen:
                    continue
                seen.add((rd.run_id, spec, scale))
                try:
                    if (spec, scale) not in parents:
                        try:
                            parents[(spec, scale)] = self.parent_run(spec, scale)
                        except TrackingError:
                            raise
                        except Exception as exc:  # noqa: BLE001 - every run of this spec fails alike
                            parents[(spec, scale)] = exc
                    parent = parents[(spec, scale)]
                    if isinstance(parent, Exception):
                        raise parent
                    outcome = self.log_run_dir(rd, spec, variant, scale, parent)
                except TrackingError:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported per run; the others are still logged
                    report.failed.append(f"{rd.run_id} ({one_line(spec, 80)}.{one_line(variant, 80)}): "
                                         f"{type(exc).__name__}: {one_line(exc)}")
                    continue
                getattr(report, outcome.replace("-", "_")).append(rd.run_id)
            for (spec, scale), parent in parents.items():
                if finish_parents and not isinstance(parent, Exception):
                    try:
                        self.finish_parent_if_done(spec, scale, parent)
                    except TrackingError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - the runs are logged; the parent's status is cosmetic
                        report.warnings.append(f"parent {spec}:{scale}: {type(exc).__name__}: {one_line(exc)}")
            report.merged = list(self.merged)
        report.warnings += missing_artifacts(self)
        return report

    def log_table(self, spec: str, scale: str, cells: Sequence[Mapping[str, Any]], artifacts: Iterable[str | Path],
                  params: Mapping[str, Any] = (), metrics: Mapping[str, float] = (),
                  figures: Optional[Path] = None, finish: bool = True) -> str:
        """The parent run of (spec, scale) is the table: every cell a metric (ours, and ours minus the
        paper as ``.../delta``), ``params`` (spec, scale, profile, git commit; a param already logged
        with another value is left as it is), the table files as artifacts (and the table's pictures
        under ``figures/``), ended now. Returns its MLflow id."""
        from mlflow.entities import Metric, Param

        registry = _registry()
        now = int(time.time() * 1000)
        rows: list[Any] = []
        for cell in cells:
            if not isinstance(cell.get("value"), (int, float)):
                continue
            table, row, column = str(cell["table"]), str(cell["row"]), str(cell["column"])
            rows.append(Metric(metric_name(cell_metric_name(table, row, column)), float(cell["value"]), now, HEADLINE_STEP))
            entry = registry.entry(f"{table}/{row}/{column}") if registry is not None else None
            if entry is not None:
                rows.append(Metric(metric_name(cell_delta_name(table, row, column)), float(cell["value"]) - float(entry.value),
                                   now, HEADLINE_STEP))
        rows += [Metric(metric_name(k), float(v), now, HEADLINE_STEP) for k, v in dict(metrics).items()]
        with self.locked():
            parent = self.parent_run(spec, scale)
            logged = self.client.get_run(parent).data.params
            new_params = [Param(k[:MAX_KEY], str(v)[:MAX_PARAM_VALUE]) for k, v in dict(params).items()
                          if v is not None and k not in logged]
            for chunk in _chunks(rows, MAX_METRICS_PER_BATCH):
                self.client.log_batch(parent, metrics=list(chunk))
            if new_params:
                self.client.log_batch(parent, params=new_params)
            for path in artifacts:
                if Path(path).is_file():
                    self.client.log_artifact(parent, str(path))
            if figures is not None and files_signature(figures):
                self.client.log_artifacts(parent, str(figures), FIGURES_DIR)
            if finish:
                self.client.set_terminated(parent, status="FINISHED")
        return parent

    def log_parent_artifacts(self, spec: str, scale: str, paths: Iterable[str | Path]) -> str:
        """Attach files (tables, results) to the parent run of (spec, scale); its MLflow id."""
        with self.locked():
            parent = self.parent_run(spec, scale)
            for path in paths:
                if Path(path).exists():
                    self.client.log_artifact(parent, str(path))
        return parent


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def harness_commit() -> str:
    """The git commit of the harness checkout ('' outside git): what tells two tables' parent runs apart."""
    from harness.expand import code_version

    return str(code_version().get("commit") or "")


def _stamp_ms(text: Any) -> Optional[int]:
    from datetime import datetime

    try:
        return int(datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S%z").timestamp() * 1000)
    except ValueError:
        return None


def job_times(rd: RunDir) -> tuple[Optional[int], Optional[int]]:
    """(start, end) of a run's job in ms since the epoch, from ``state.json``'s history: the first
    ``running`` entry, and the last entry when the run has ended (else None)."""
    history = [h for h in (rd.read_state().get("history") or []) if isinstance(h, Mapping)]
    start = next((_stamp_ms(h.get("time")) for h in history if h.get("state") == "running"), None)
    end = None
    if history and history[-1].get("state") in STATUS_OF_STATE:
        end = _stamp_ms(history[-1].get("time"))
    return start, end


def curve_prefix(row: Mapping[str, Any]) -> str:
    """``train/`` for training lines, ``epochs/<split>/`` for per-epoch validation, ``<kind>/`` else."""
    kind = row.get("kind")
    if not isinstance(kind, str) or not kind:
        return ""
    prefix = CURVE_PREFIX.get(kind, kind)
    split = row.get("split")
    if kind == "val" and isinstance(split, str) and split:
        return f"{prefix}/{split}/"
    return f"{prefix}/"


def files_signature(folder: Path) -> str:
    """A short hash of the names, sizes and times of the files under ``folder`` ('' when none)."""
    try:
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
    except OSError:
        return ""
    if not files:
        return ""
    text = "\n".join(f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunAbout:
    """What the MLflow child of ``spec.variant`` says about itself: its name, its table order, the
    variant's description, the other variants that are the same run, the cells they fill."""

    name: str
    order: str = ""
    description: str = ""
    variants: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    spec_description: str = ""

    def note(self, run_id: str) -> str:
        lines = [f"**{self.name}**" + (f": {self.description}" if self.description else "")]
        if len(self.variants) > 1:
            lines += ["", "The same run as: " + ", ".join(f"`{v}`" for v in self.variants[1:])]
        if self.cells:
            lines += ["", "Fills the cells (table/row/column): " + ", ".join(f"`{c}`" for c in self.cells)]
        lines += ["", f"Run directory: `runs/{run_id}` (the source of truth; `result.json` holds the counts)."]
        return "\n".join(lines)


def _load_spec_named(name: str, hint: Any, cache: dict[str, Any]) -> Any:
    """The spec called ``name``: the run's ``spec_path`` when it is that spec, else ``experiments/<name>.yaml``
    or any shipped spec of that name (None when none is found or it no longer loads)."""
    if name in cache:
        return cache[name]
    experiments = Path(__file__).resolve().parent.parent / "experiments"
    found = None
    for path in ([Path(str(hint))] if hint else []) + [experiments / f"{name}.yaml"]:
        spec = _try_spec(str(path))
        if spec is not None and spec.name == name:
            found = spec
            break
    else:
        found = _shipped_specs().get(name)
    cache[name] = found
    return found


def _try_spec(path: str) -> Any:
    from harness.spec import load_spec

    try:
        return load_spec(path) if Path(path).is_file() else None
    except Exception:  # noqa: BLE001 - a spec that no longer loads just gives no description
        return None


@functools.lru_cache(maxsize=1)
def _shipped_specs() -> dict[str, Any]:
    """The specs under ``experiments/`` by name (read once per process)."""
    out: dict[str, Any] = {}
    for path in sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.yaml")):
        spec = _try_spec(str(path))
        if spec is not None:
            out.setdefault(spec.name, spec)
    return out


def describe_variant(meta: Mapping[str, Any], spec: str, variant: str, cache: dict[str, Any]) -> RunAbout:
    """:class:`RunAbout` of the child of ``spec.variant`` (a paper table's child: ``variant`` is
    ``<spec>.<variant>``); the variants of the same spec that request the run, in the spec's order."""
    real_spec, real_variant = spec, variant
    if "." in variant:  # variant names are identifiers: a dotted one is <spec>.<variant>
        real_spec, real_variant = variant.split(".", 1)
    loaded = _load_spec_named(real_spec, meta.get("spec_path"), cache)
    requested = [str(r.get("variant")) for r in (meta.get("requested_by") or [])
                 if isinstance(r, Mapping) and str(r.get("spec")) == real_spec]
    names = list(loaded.variants) if loaded is not None else []
    same = sorted({real_variant, *requested}, key=lambda v: (names.index(v) if v in names else len(names), v))
    name = f"{real_spec}.{real_variant}"
    if loaded is None or real_variant not in loaded.variants:
        return RunAbout(name=name, variants=[f"{real_spec}.{v}" for v in same])
    cells: list[str] = []
    for v in same:
        for c in (loaded.variants[v].cells if v in loaded.variants else []):
            key = f"{c.table}/{c.row}/{c.column}"
            if key not in cells:
                cells.append(key)
    tables = sorted({c.split("/")[0] for c in cells})
    description = loaded.variants[real_variant].description
    return RunAbout(name=name, order=f"{names.index(same[0]):03d}", description=description,
                    variants=[f"{real_spec}.{v}" for v in same], cells=cells, tables=tables,
                    spec_description=f"{real_spec}: {loaded.description}" if loaded.description else "")


def _registry() -> Any:
    try:
        from harness.registry import load_registry

        return load_registry()
    except Exception:  # noqa: BLE001 - without the paper's numbers the table still logs ours
        return None


# ------------------------------------------------------------------------------------ moved stores
def _sqlite_path(uri: str) -> Optional[Path]:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def missing_artifacts(tracker: "Tracker") -> list[str]:
    """One warning per experiment of a local store whose artifact folder is not on this machine (a
    moved ``results/``: ``bikebench sync --rebase`` points them at the new place)."""
    if _sqlite_path(tracker.uri) is None:
        return []
    from urllib.parse import unquote, urlparse

    out = []
    try:
        experiments = tracker.client.search_experiments()
    except TrackingError:
        raise
    except Exception:  # noqa: BLE001 - a warning, not a fault
        return []
    for exp in experiments:
        loc = exp.artifact_location or ""
        if not loc.startswith("file:"):
            continue
        path = Path(unquote(urlparse(loc).path))
        has_runs = tracker.client.search_runs([exp.experiment_id], max_results=1)
        if has_runs and not path.exists():
            out.append(f"experiment {exp.name!r}: its artifacts ({path}) are missing; moved results? "
                       f"run `bikebench sync --rebase` to point the store at {tracker.results / 'mlartifacts'}")
    return out


def rebase_store(results: str | Path, tracking_uri: Optional[str] = None) -> list[str]:
    """Point a moved SQLite store's artifact locations at ``<results>/mlartifacts``: every experiment
    location and run artifact URI ending in ``/mlartifacts/...`` gets the new prefix. Returns one line
    per experiment changed (``old -> new``)."""
    import sqlite3

    results = Path(results).resolve()
    uri = resolve_tracking_uri(tracking_uri, results)
    db = _sqlite_path(uri)
    if db is None or not db.exists():
        raise TrackingError(f"--rebase needs a SQLite store; {uri} is not one (or does not exist)")
    new_root = (results / "mlartifacts").as_uri()
    changed = []
    with file_lock(store_lock_path(uri, results)):
        con = sqlite3.connect(db)
        try:
            for exp_id, name, loc in con.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall():
                if not loc or "/mlartifacts/" not in loc:
                    continue
                old_root = loc[: loc.rindex("/mlartifacts/") + len("/mlartifacts")]
                if old_root == new_root:
                    continue
                con.execute("UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?) "
                            "WHERE experiment_id = ?", (new_root, len(old_root) + 1, exp_id))
                con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                            "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                            (new_root, len(old_root) + 1, exp_id, len(old_root), old_root))
                changed.append(f"{name}: {old_root} -> {new_root}")
            con.commit()
        finally:
            con.close()
    return changed


def ui_links(results: str | Path, tracking_uri: Optional[str], base_url: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(tracking URI, ``(experiment, link)`` per experiment with runs — the runs view, table order —,
    warnings about missing artifacts). A store that does not exist yet gives the experiments list."""
    from harness.mlflow_runs import runs_view_link

    results = Path(results).resolve()
    uri = resolve_tracking_uri(tracking_uri, results)
    db = _sqlite_path(uri)
    if db is not None and not db.exists():
        return uri, [("experiments", runs_view_link(base_url))], []
    tracker = Tracker(results, tracking_uri)
    links = []
    with tracker.locked():
        for exp in tracker.client.search_experiments():
            if tracker.client.search_runs([exp.experiment_id], max_results=1):
                links.append((exp.name, runs_view_link(base_url, exp.experiment_id)))
        warnings = missing_artifacts(tracker)
    return uri, links or [("experiments", runs_view_link(base_url))], warnings


def sync(results: str | Path, tracking_uri: Optional[str] = None) -> SyncReport:
    """Replay every run directory into MLflow: creates what is missing, appends what is new, merges
    duplicates; runs MLflow rejects are in the report's ``failed`` (raises :class:`TrackingError` when
    the store cannot be used at all)."""
    tracker = Tracker(results, tracking_uri)
    entries = []
    report = SyncReport()
    metas = {rd.run_id: (rd, rd.read_meta() or {}) for rd in list_run_dirs(results)}

    def depth(run_id: str, seen: frozenset = frozenset()) -> int:  # runs a run starts from are logged first
        deps = [d for d in (metas.get(run_id, (None, {}))[1].get("dependencies") or []) if d in metas and d not in seen]
        return 1 + max((depth(d, seen | {run_id}) for d in deps), default=-1)

    for run_id in sorted(metas, key=lambda r: (depth(r), r)):
        rd, meta = metas[run_id]
        requested = meta.get("requested_by") or []
        if not requested:
            report.skipped.append(rd.run_id)
            continue
        for req in requested:
            entries.append((rd, str(req.get("spec")), str(req.get("variant")), str(req.get("scale", meta.get("scale", "")))))
    logged = tracker.log_plan_runs(entries)
    logged.skipped = report.skipped
    return logged
