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

from bike.rundir import CONFIG_FILE, META_FILE  # noqa: E402
from harness.mlflow_runs import (  # noqa: E402  (the tag names, shared with the studies' logging)
    TAG_BACKBONE,
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
from harness.mlflow_runs import OLDEST_FIRST, merge_duplicates, store_lock_path  # noqa: E402
from harness.mlflow_runs import artifact_location as _artifact_location  # noqa: E402
from harness.mlflow_runs import experiment_id as _experiment_id  # noqa: E402
from harness.mlflow_runs import parent_run as _parent_run  # noqa: E402
from bike.rundir import file_lock  # noqa: E402
from harness.rundir import RunDir, list_run_dirs  # noqa: E402

STATUS_OF_STATE = {"done": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
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

    def __str__(self) -> str:
        text = (f"{len(self.created)} created, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged, {len(self.skipped)} without a spec")
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
        """The parent run of (spec, scale), created on first use; its MLflow run id. Duplicate
        parents are merged into the oldest."""
        exp_id, key = self.experiment_id(spec), f"{spec}:{scale}"
        with self.locked():
            found = self.client.search_runs([exp_id], filter_string=f"tags.`{TAG_PARENT_KEY}` = '{key}'",
                                            max_results=50, order_by=OLDEST_FIRST)
            if len(found) > 1 and merge_duplicates(self.client, exp_id, found):
                self.merged.append(f"parent {key}")
                self._children.pop(exp_id, None)  # the children now point at the kept parent
            run = _parent_run(self.client, exp_id, key, f"{spec} ({scale})",
                              tags={TAG_SPEC: spec, TAG_SCALE: scale, **dict(tags or {})})
        return run.info.run_id

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
        """Create or update the child run of ``rd`` under (spec, scale); returns created/updated/unchanged."""
        with self.locked():
            return self._log_run_dir(rd, spec, variant, scale, parent_id)

    def _log_run_dir(self, rd: RunDir, spec: str, variant: str, scale: str, parent_id: Optional[str]) -> str:
        from mlflow.entities import Metric, Param, RunTag

        exp_id = self.experiment_id(spec)
        parent_id = parent_id or self.parent_run(spec, scale)
        children = self.children(exp_id)
        meta = rd.read_meta() or {}
        state = rd.state()
        existing = children.get(rd.run_id)
        outcome = "unchanged"
        if existing is None:
            config = _read_yaml(rd.config_path)
            run = self.client.create_run(exp_id, run_name=f"{variant} [{rd.run_id}]", tags=self._tags(rd, meta, config, spec, variant, scale, parent_id))
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

        # metrics.jsonl: only the lines not logged yet
        rows = list(rd.metrics())
        done_lines = int(tags.get(TAG_METRIC_LINES, "0") or 0)
        metrics = []
        now = int(time.time() * 1000)
        for index, row in enumerate(rows[done_lines:], start=done_lines):
            step = row.get("step", index)
            step = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else index
            stamp = row.get("time")
            ts = int(float(stamp) * 1000) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else now
            kind = row.get("kind")
            prefix = f"{kind}/" if isinstance(kind, str) and kind else ""
            for key, value in numeric_items(row):
                if key in ("step", "time"):
                    continue
                metrics.append(Metric(metric_name(prefix + key), value, ts, step))
        new_tags = [RunTag(TAG_METRIC_LINES, str(len(rows)))] if len(rows) != done_lines else []
        result = rd.result() if state == "done" else None
        if result is not None and tags.get(TAG_RESULT_LOGGED) != "1":
            last_step = max((m.step for m in metrics), default=len(rows))
            for key, value in numeric_items(result):
                metrics.append(Metric(metric_name(key), value, now, last_step))
            new_tags.append(RunTag(TAG_RESULT_LOGGED, "1"))
            self.client.log_artifact(run_id, str(rd.result_path))
        sub = rd.last_submission() or {}
        if sub.get("job_id") and tags.get(TAG_JOB_ID) != str(sub["job_id"]):
            new_tags += [RunTag(TAG_JOB_ID, str(sub["job_id"])), RunTag(TAG_CLUSTER, str(sub.get("cluster", "")))]
        if tags.get(TAG_STATE) != state:
            new_tags.append(RunTag(TAG_STATE, state))
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=list(chunk))
        if new_tags:
            self.client.log_batch(run_id, tags=new_tags)
        if state in STATUS_OF_STATE and tags.get(TAG_STATE) != state:
            self.client.set_terminated(run_id, status=STATUS_OF_STATE[state])
        if outcome == "unchanged" and (metrics or new_tags):
            outcome = "updated"
        if outcome != "unchanged":
            children[rd.run_id] = self.client.get_run(run_id)
        return outcome

    def _tags(self, rd: RunDir, meta: Mapping[str, Any], config: Mapping[str, Any], spec: str, variant: str,
              scale: str, parent_id: str) -> dict[str, str]:
        code = meta.get("code") or {}
        ev = config.get("eval", {}) if isinstance(config, Mapping) else {}
        tags = {
            TAG_RUN_ID: rd.run_id,
            TAG_PARENT_RUN: parent_id,
            TAG_SPEC: spec,
            TAG_VARIANT: variant,
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
    def log_plan_runs(self, entries: Iterable[tuple[RunDir, str, str, str]]) -> SyncReport:
        """Log ``(run_dir, spec, variant, scale)`` entries; one parent per (spec, scale), all under the
        store's lock. A run MLflow rejects is reported in ``failed`` and the others are logged; a store
        that cannot be used at all raises :class:`TrackingError`."""
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
                getattr(report, outcome).append(rd.run_id)
            report.merged = list(self.merged)
        return report

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


def sync(results: str | Path, tracking_uri: Optional[str] = None) -> SyncReport:
    """Replay every run directory into MLflow: creates what is missing, appends what is new, merges
    duplicates; runs MLflow rejects are in the report's ``failed`` (raises :class:`TrackingError` when
    the store cannot be used at all)."""
    tracker = Tracker(results, tracking_uri)
    entries = []
    report = SyncReport()
    for rd in list_run_dirs(results):
        meta = rd.read_meta() or {}
        requested = meta.get("requested_by") or []
        if not requested:
            report.skipped.append(rd.run_id)
            continue
        for req in requested:
            entries.append((rd, str(req.get("spec")), str(req.get("variant")), str(req.get("scale", meta.get("scale", "")))))
    logged = tracker.log_plan_runs(entries)
    logged.skipped = report.skipped
    return logged
