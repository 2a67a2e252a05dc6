"""The run directory: the source of truth for one run (layout in docs/ARCHITECTURE.md).

```
<results>/runs/<run_id>/
  config.yaml       resolved RunConfig (written once by the driver)
  meta.json         code version, spec/variant/scale that asked for the run, created (driver)
  state.json        job-side lifecycle: running / requeued / done / failed (the job writes it)
  submissions.json  every submission: cluster, job id, submitit folder, time (the driver writes it)
  log.txt, metrics.jsonl, checkpoints/, cache/, result.json   (the engine writes them)
  .driver.lock      held by the driver that submits the run and waits for it (:meth:`RunDir.lock`)
```

Two writers never share a file: the driver owns ``config.yaml``/``meta.json``/``submissions.json``
(and ``state.json`` only to record ``pending`` before any submission or ``cancelled``/``failed``
when a job vanished without saying so); the job owns ``state.json`` while it runs. The file names and
the atomic writes (temporary file + ``fsync`` + ``os.replace``) are ``bike.rundir``'s, so a crash never
leaves half a file behind.

Statuses reported by :func:`run_status`: ``pending`` (planned, never submitted), ``queued``
(submitted, not started), ``running``, ``requeued`` (checkpointed after a timeout/preemption, waiting
to resume), ``done`` (``result.json`` says so), ``failed``, ``cancelled``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from bike import rundir as layout
from bike.rundir import atomic_write_text, file_lock, read_json  # noqa: F401 - re-exported for the harness

#: The driver's lock file in a run directory (:meth:`RunDir.lock`).
LOCK_FILE = ".driver.lock"
RUN_STATES = ("pending", "queued", "running", "requeued", "done", "failed", "cancelled")
TERMINAL_STATES = ("done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running", "requeued")
STATE_HISTORY_LIMIT = 200  # entries kept in state.json's history


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    """``bike.rundir.atomic_write_json`` with the driver's fallback: objects JSON cannot hold are
    written as their ``str``."""
    return layout.atomic_write_json(path, payload, default=str)


def now_iso() -> str:
    """Local time, ISO 8601 with seconds (what every file of the run directory records)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def runs_root(results: str | Path) -> Path:
    """``<results>/runs``."""
    return Path(results).resolve() / "runs"


class RunDir:
    """Paths and state of one run directory ``<results>/runs/<run_id>``."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    @classmethod
    def for_run(cls, results: str | Path, run_id: str) -> "RunDir":
        return cls(runs_root(results) / run_id)

    # ------------------------------------------------------------------ paths
    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / layout.CONFIG_FILE

    @property
    def meta_path(self) -> Path:
        return self.path / layout.META_FILE

    @property
    def state_path(self) -> Path:
        return self.path / layout.STATE_FILE

    @property
    def submissions_path(self) -> Path:
        return self.path / layout.SUBMISSIONS_FILE

    @property
    def result_path(self) -> Path:
        return self.path / layout.RESULT_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / layout.METRICS_FILE

    @property
    def log_path(self) -> Path:
        return self.path / layout.LOG_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return layout.checkpoint_dir(self.path)

    @property
    def cache_dir(self) -> Path:
        return layout.cache_dir(self.path)

    def exists(self) -> bool:
        return self.config_path.exists()

    def lock(self):
        """The run's driver lock (``.driver.lock``; :func:`bike.rundir.file_lock`): a driver holds it from
        before it decides to submit the run until the job has ended, so two drivers never submit it twice."""
        return file_lock(self.path / LOCK_FILE)

    # ------------------------------------------------------------------ driver side
    def prepare(self, config_yaml: str, meta: dict[str, Any]) -> None:
        """Create the directory, write ``config.yaml`` once and merge ``meta`` into ``meta.json``.

        ``meta["code"]`` (the code version) is updated on every submission but never on a finished run.

        ``meta["requested_by"]`` entries (``{spec, variant, scale}``) accumulate, so a run shared by
        several specs or variants remembers all of them. An existing ``config.yaml`` that differs
        from ``config_yaml`` means a hash collision or a hand-edited file: that is an error.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if self.config_path.exists():
            if self.config_path.read_text() != config_yaml and not _same_content(self.config_path, config_yaml):
                raise RuntimeError(
                    f"{self.config_path}: differs from the configuration planned for run {self.run_id} "
                    "(edited by hand?). Move the directory away to re-run it."
                )
        else:
            atomic_write_text(self.config_path, config_yaml)
        old = self.read_meta() or {}
        # a finished run keeps the code version that produced it
        keep = ("requested_by", "code") if self.is_done() and "code" in old else ("requested_by",)
        merged = {**old, **{k: v for k, v in meta.items() if k not in keep}}
        merged.setdefault("created", old.get("created", now_iso()))
        requested = list(old.get("requested_by", []))
        for entry in meta.get("requested_by", []):
            if entry not in requested:
                requested.append(entry)
        merged["requested_by"] = requested
        if merged != old:
            atomic_write_json(self.meta_path, merged)
        if not self.state_path.exists():
            self.write_state("pending")

    def record_submission(self, cluster: str, job_id: str, folder: str | Path, **extra: Any) -> None:
        """Append one submission (job id, cluster, submitit folder) to ``submissions.json``."""
        subs = self.submissions()
        subs.append({"cluster": cluster, "job_id": str(job_id), "folder": str(folder), "time": now_iso(), **extra})
        atomic_write_json(self.submissions_path, subs)

    # ------------------------------------------------------------------ readers
    def read_meta(self) -> Optional[dict[str, Any]]:
        return read_json(self.meta_path)

    def read_state(self) -> dict[str, Any]:
        return read_json(self.state_path) or {}

    def submissions(self) -> list[dict[str, Any]]:
        subs = read_json(self.submissions_path)
        return list(subs) if isinstance(subs, list) else []

    def last_submission(self) -> Optional[dict[str, Any]]:
        subs = self.submissions()
        return subs[-1] if subs else None

    def result(self) -> Optional[dict[str, Any]]:
        res = read_json(self.result_path)
        return res if isinstance(res, dict) else None

    def is_done(self) -> bool:
        """``result.json`` exists and does not say otherwise (``status`` absent or ``done``)."""
        res = self.result()
        return res is not None and res.get("status", "done") == "done"

    def metrics(self) -> Iterator[dict[str, Any]]:
        """The lines of ``metrics.jsonl`` (a torn last line, from a job killed mid-write, is skipped)."""
        try:
            lines = self.metrics_path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row

    # ------------------------------------------------------------------ state
    def write_state(self, state: str, **info: Any) -> dict[str, Any]:
        """Set the lifecycle state (one of :data:`RUN_STATES`), keeping a short history."""
        if state not in RUN_STATES:
            raise ValueError(f"state {state!r} is not one of {RUN_STATES}")
        old = self.read_state()
        history = list(old.get("history", []))
        stamp = now_iso()
        history.append({"state": state, "time": stamp, **{k: v for k, v in info.items() if k in ("job_id", "reason")}})
        new = {k: v for k, v in old.items() if k not in ("history", "error", "reason")}
        new.update(info)
        new["state"] = state
        new["updated"] = stamp
        if state == "running":
            new["attempts"] = int(old.get("attempts", 0)) + 1
        new["history"] = history[-STATE_HISTORY_LIMIT:]
        atomic_write_json(self.state_path, new)
        return new

    def state(self) -> str:
        """The recorded state: ``done`` when the result says so, else ``state.json``'s, with
        ``pending`` + a recorded submission reading as ``queued``."""
        if self.is_done():
            return "done"
        state = self.read_state().get("state")
        if state is None:
            return "pending"
        if state == "done":  # state says done but result.json is missing or not done
            return "failed"
        if state == "pending" and self.submissions():
            return "queued"
        return state


def _same_content(path: Path, config_yaml: str) -> bool:
    """Whether two config texts have the same content hash (they may differ in `name` only)."""
    import yaml

    from bike.config import RunConfig

    try:
        old = RunConfig.model_validate(yaml.safe_load(path.read_text()) or {})
        new = RunConfig.model_validate(yaml.safe_load(config_yaml) or {})
    except Exception:  # noqa: BLE001 - an unreadable old config is simply "not the same"
        return False
    return old.content_hash() == new.content_hash()


def list_run_dirs(results: str | Path) -> list[RunDir]:
    """Every run directory under ``<results>/runs`` (those holding a ``config.yaml``), sorted."""
    root = runs_root(results)
    if not root.is_dir():
        return []
    return [RunDir(p) for p in sorted(root.iterdir()) if (p / layout.CONFIG_FILE).exists()]
