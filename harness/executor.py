"""Submitting a plan through submitit: ``local`` (default), ``slurm`` or ``debug``, chosen explicitly.

* The cluster is always named (never ``AutoExecutor``'s guess) and every job has a wall-clock limit.
* Runs already done (``result.json``) are skipped; unfinished ones are resubmitted and resume from
  their checkpoint; runs whose recorded job is still alive are waited for, never duplicated.
* Local: ``parallelism`` slots (2 CPU cores do not run 8 trainings well); a run starts as soon as a
  slot is free and its dependencies are done, the runs others depend on first (then the runs with
  more test views, the longest evaluations, so that none is left running alone at the end), and the runs started
  together go out as one job array (``executor.batch()``). Debug (in this process): waves in
  dependency order.
* SLURM: every wave is submitted at once as job arrays; a wave's array waits for its dependencies
  with ``--dependency=afterok:<ids>`` (``kill_on_invalid_dep`` cancels it if one fails).
* Submitit folders are unique per invocation (``<results>/submitit/<time>-<pid>-<random>``): SLURM
  job ids restart on a fresh state directory, and a reused folder would read back stale results.
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import submitit

from bike.config import ConfigError
from harness.expand import Plan, PlannedRun, prepare_run_dirs
from harness.jobs import JobTarget, RunJob, job_target, threads_for
from harness.rundir import TERMINAL_STATES, RunDir
from harness.spec import ResourceSpec, SlurmSpec
from harness.spec.models import parse_slurm_time

CLUSTERS: tuple[str, ...] = ("local", "slurm", "debug")
DEFAULT_SIGNAL_DELAY_S = 120  # time to write a checkpoint of a large model before the limit
SIGNAL_DELAY_MAX_SHARE = 0.25  # ... but never more than this share of a short wall-clock limit
#: Seconds a SLURM job needs after it starts (batch script, srun step, Python imports) to install submitit's
#: signal handler: a checkpoint signal before then kills the job unhandled, and it is never requeued.
SLURM_START_MARGIN_S = 30
#: slurmctld sends the ``--signal`` warning up to this much earlier than asked: its time-limit check runs
#: every 30 s and sends the warning early rather than late. (CI saw ``--time=1 --signal=USR2@55`` arrive
#: during start-up and kill the job.)
SLURM_SIGNAL_EARLY_S = 30
DEFAULT_POLL_S = 2.0
#: The local slot scheduler looks for finished jobs at least this often (a local job's state is a cheap
#: check of its process; a slot left idle for the 2 s of ``DEFAULT_POLL_S`` after each job adds up).
LOCAL_POLL_S = 0.5
SLURM_ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING")
SLURM_CANCELLED = ("CANCELLED",)
SLURM_FAILED = ("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


@dataclass
class RunOutcome:
    """What happened to one planned run in this invocation."""

    run_id: str
    state: str  # done / failed / cancelled / pending (blocked) / planned (dry run) / queued ...
    action: str  # skipped-done / submitted / waited / blocked / dry-run
    job_id: Optional[str] = None
    reason: str = ""


@dataclass
class Submission:
    """A dry-run or real submission group: the runs of one array and its submitit parameters."""

    wave: int
    run_ids: list[str]
    parameters: dict[str, Any]
    job_ids: list[str] = field(default_factory=list)


def invocation_folder(results: str | Path) -> Path:
    """A submitit folder no other invocation uses: ``<results>/submitit/<time>-<pid>-<hex>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(results).resolve() / "submitit" / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}"


def signal_delay(resources: ResourceSpec) -> int:
    """Seconds between the checkpoint signal and the wall-clock limit."""
    if resources.signal_delay_s is not None:
        return resources.signal_delay_s
    limit_s = float(resources.timeout_min or 0) * 60
    return max(1, int(min(DEFAULT_SIGNAL_DELAY_S, limit_s * SIGNAL_DELAY_MAX_SHARE)))


def slurm_parameters(resources: ResourceSpec, job_name: str, dependency: Sequence[str] = ()) -> dict[str, Any]:
    """The SlurmExecutor parameters of one array: resources + afterok dependencies."""
    s: SlurmSpec = resources.slurm
    if resources.timeout_min is None:
        raise ValueError("timeout_min must be set for every job")
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": parse_slurm_time(s.time) if s.time is not None else math.ceil(resources.timeout_min),
        "signal_delay_s": signal_delay(resources),
    }
    latest_ok = params["time"] * 60 - SLURM_SIGNAL_EARLY_S - SLURM_START_MARGIN_S
    if params["signal_delay_s"] > latest_ok:
        fix = (f"expected resources.signal_delay_s <= {latest_ok}" if latest_ok >= 1
               else "expected resources.timeout_min >= 2")
        raise ConfigError(
            f"resources.signal_delay_s={params['signal_delay_s']} with a {params['time']}-min SLURM limit: SLURM "
            f"may send the checkpoint signal up to {SLURM_SIGNAL_EARLY_S} s early, so it could come in the job's "
            f"first {SLURM_START_MARGIN_S} s, while it is still starting, and kill it unrequeued; {fix}")
    mapping = {
        "partition": s.partition,
        "gpus_per_node": s.gpus_per_node,
        "nodes": s.nodes,
        "ntasks_per_node": s.tasks_per_node,
        "cpus_per_task": s.cpus_per_task,
        "mem": s.mem,
        "account": s.account,
        "qos": s.qos,
        "constraint": s.constraint,
        "exclude": s.exclude,
        "array_parallelism": s.array_parallelism,
    }
    params.update({k: v for k, v in mapping.items() if v is not None})
    if s.setup:
        params["setup"] = list(s.setup)
    additional = dict(s.additional)
    if dependency:
        params["dependency"] = "afterok:" + ":".join(dependency)
        additional.setdefault("kill_on_invalid_dep", "yes")
    if additional:
        params["additional_parameters"] = additional
    return params


def local_parameters(resources: ResourceSpec) -> dict[str, Any]:
    """LocalExecutor parameters: the wall-clock limit (fractions of a minute allowed) and signal delay."""
    if resources.timeout_min is None:
        raise ValueError("timeout_min must be set for every job")
    params: dict[str, Any] = {"timeout_min": resources.timeout_min, "signal_delay_s": signal_delay(resources)}
    if resources.slurm.gpus_per_node:
        params["gpus_per_node"] = resources.slurm.gpus_per_node
    if resources.slurm.tasks_per_node:
        params["tasks_per_node"] = resources.slurm.tasks_per_node
    return params


def executor_parameters(cluster: str, resources: ResourceSpec, job_name: str,
                        dependency: Sequence[str] = ()) -> dict[str, Any]:
    """submitit parameters of a job (or job array) on ``cluster``: :func:`slurm_parameters`,
    :func:`local_parameters`, or for the debug executor the time limit only."""
    if cluster == "slurm":
        return slurm_parameters(resources, job_name=job_name, dependency=dependency)
    if cluster == "local":
        return local_parameters(resources)
    if cluster == "debug":
        return {"timeout_min": resources.timeout_min}
    raise ValueError(f"executor: got {cluster!r}; expected one of 'local', 'slurm' or 'debug'")


def make_executor(cluster: str, folder: Path, resources: ResourceSpec, parameters: Mapping[str, Any]) -> submitit.Executor:
    """A submitit executor for the named cluster (never auto-detected)."""
    max_timeouts = resources.max_num_timeout if resources.max_num_timeout is not None else 3
    if cluster == "local":
        ex: submitit.Executor = submitit.LocalExecutor(folder=folder, max_num_timeout=max_timeouts)
    elif cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_timeouts)
    elif cluster == "debug":
        ex = submitit.DebugExecutor(folder=folder)  # in this process, sequential; the limit is recorded only
    else:
        raise ValueError(f"executor {cluster!r}: expected one of {CLUSTERS}")
    ex.update_parameters(**parameters)
    return ex


# ---------------------------------------------------------------------------------- job liveness
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"submitit" in cmd


def sacct_states(job_ids: Sequence[str]) -> dict[str, str]:
    """SLURM states of job ids via ``sacct`` (empty when sacct is missing or fails)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            states[parts[0]] = parts[1].split()[0] if parts[1] else ""
    return states


def recorded_job_state(rd: RunDir, sacct: Optional[Callable[[Sequence[str]], dict[str, str]]] = None) -> Optional[str]:
    """Cluster view of the run's last submission: ``active``, ``cancelled``, ``failed``, ``gone`` or None."""
    sub = rd.last_submission()
    if not sub:
        return None
    cluster, job_id = sub.get("cluster"), str(sub.get("job_id", ""))
    if cluster == "local" and job_id.isdigit():
        return "active" if _pid_alive(int(job_id)) else "gone"
    if cluster == "slurm" and job_id:
        state = (sacct or sacct_states)([job_id]).get(job_id)
        if state is None:
            return None
        if state in SLURM_ACTIVE:
            return "active"
        if state.startswith("CANCELLED"):
            return "cancelled"
        if state in SLURM_FAILED:
            return "failed"
        return "gone"
    return None


def run_status(rd: RunDir, sacct: Optional[Callable[[Sequence[str]], dict[str, str]]] = None) -> str:
    """The state of a run for ``bikebench status``: the run directory's, corrected by the cluster's
    view when the recorded job is gone (a killed job reads ``failed``, a cancelled one ``cancelled``)."""
    state = rd.state()
    if state in ("queued", "running", "requeued"):
        cluster = recorded_job_state(rd, sacct)
        if cluster == "cancelled":
            return "cancelled"
        if cluster in ("failed", "gone"):
            return rd.state() if rd.state() in TERMINAL_STATES else "failed"
    return state


# ---------------------------------------------------------------------------------- the runner
class Runner:
    """Submit a plan, wait for it, and leave every run directory in a terminal state."""

    def __init__(
        self,
        results: str | Path,
        cluster: str = "local",
        job_targets: Optional[Mapping[str, JobTarget]] = None,
        resources: Optional[ResourceSpec] = None,
        parallelism: int = 1,
        poll_s: float = DEFAULT_POLL_S,
        log: Callable[[str], None] = print,
    ):
        if cluster not in CLUSTERS:
            raise ValueError(f"executor {cluster!r}: expected one of {CLUSTERS}")
        if parallelism < 1:
            raise ValueError(f"parallelism {parallelism}: expected >= 1")
        self.results = Path(results).resolve()
        self.cluster = cluster
        self.job_targets = dict(job_targets or {})
        self.resources_override = resources
        self.parallelism = parallelism
        self.poll_s = poll_s
        self.log = log
        self.folder: Optional[Path] = None
        self.submissions: list[Submission] = []
        self._preflown: Optional[int] = None
        self._total = 0  # runs this invocation runs (for the "[k/N]" of each finished run)
        self._finished = 0
        self._submitted_at: dict[str, float] = {}

    # -------------------------------------------------------------- helpers
    def target(self, kind: str) -> JobTarget:
        return self.job_targets.get(kind) or job_target(kind)

    def resources(self, run: PlannedRun) -> ResourceSpec:
        return run.resources.merged(self.resources_override)

    def parameters(self, run: PlannedRun, dependency: Sequence[str] = ()) -> dict[str, Any]:
        return executor_parameters(self.cluster, self.resources(run), f"bike-{run.requested_by[0][0]}", dependency)

    def job_threads(self, run: PlannedRun) -> Optional[int]:
        """torch threads per job: ``cpus_per_task`` when set; local jobs share the cores of this
        machine (``cpu_count // parallelism``); SLURM jobs read their allocation inside the job."""
        return threads_for(self.cluster, self.resources(run).slurm.cpus_per_task, self.parallelism)

    def _job(self, run: PlannedRun) -> RunJob:
        return RunJob(run.run_dir, run.config.to_yaml(), self.target(run.kind), self.job_threads(run))

    # -------------------------------------------------------------- main entry
    def preflight(self, plan: Plan, dry_run: bool = False) -> None:
        """Refuse the plan when a run not yet done would meet bad inputs (:mod:`harness.preflight`: files,
        lists, backbones, batch sizes, ...) or resources that cannot work, before anything is made or
        submitted; a dry run prints the input problems as warnings. Done once per plan."""
        from harness.preflight import preflight

        if self._preflown == id(plan):
            return
        todo = [run for run in plan.runs if not RunDir(run.run_dir).is_done()]
        for run in todo:
            self.parameters(run)  # resources that cannot work (e.g. the signal inside the start-up)
        preflight(Plan(plan.scale, plan.results, todo, specs=plan.specs), self.cluster, self.resources,
                  self.job_targets, dry_run=dry_run)
        self._preflown = id(plan)

    def execute(self, plan: Plan, dry_run: bool = False) -> dict[str, RunOutcome]:
        """Run every planned run not yet done; returns an outcome per run id."""
        outcomes: dict[str, RunOutcome] = {}
        self.preflight(plan, dry_run=dry_run)
        if not dry_run:
            prepare_run_dirs(plan)
        pending: list[PlannedRun] = []
        foreign: dict[str, RunDir] = {}
        for run in plan.runs:
            rd = RunDir(run.run_dir)
            if rd.is_done():
                outcomes[run.run_id] = RunOutcome(run.run_id, "done", "skipped-done")
            elif not dry_run and recorded_job_state(rd) == "active":
                foreign[run.run_id] = rd
                sub = rd.last_submission() or {}
                outcomes[run.run_id] = RunOutcome(run.run_id, "running", "waited", sub.get("job_id"))
            else:
                pending.append(run)
        for run in pending:
            self.parameters(run)  # resources that cannot work fail here, before anything is submitted
        self._total, self._finished = len(pending), 0
        if not dry_run:
            skipped = sum(1 for o in outcomes.values() if o.action == "skipped-done")
            self.log(f"{len(plan.runs)} run(s) planned: {skipped} already done, {len(foreign)} running elsewhere, "
                     f"{len(pending)} to run ({self.cluster}" + (f", {self.parallelism} at a time)" if self.cluster != "slurm" else ")"))
        self.folder = invocation_folder(self.results)
        if self.cluster == "slurm":
            self._execute_slurm(plan, pending, foreign, outcomes, dry_run)
        elif self.cluster == "local" and not dry_run:
            self._execute_slots(plan, pending, foreign, outcomes)
        else:
            self._execute_waves(plan, pending, foreign, outcomes, dry_run)
        return outcomes

    def _blocked(self, run: PlannedRun, outcomes: Mapping[str, RunOutcome]) -> Optional[str]:
        for dep in run.dependencies:
            o = outcomes.get(dep)
            if o is not None and o.state not in ("done", "planned"):
                return f"dependency {dep} is {o.state}"
        return None

    def _execute_waves(
        self, plan: Plan, pending: list[PlannedRun], foreign: dict[str, RunDir],
        outcomes: dict[str, RunOutcome], dry_run: bool,
    ) -> None:
        todo = {r.run_id for r in pending}
        for wave_index, wave in enumerate(plan.waves()):
            # Runs of this wave another invocation is running: wait for them first.
            for run in wave:
                if run.run_id in foreign:
                    outcomes[run.run_id].state = self._wait_foreign(foreign[run.run_id])
            runs = [r for r in wave if r.run_id in todo]
            ready = []
            for run in runs:
                reason = self._blocked(run, outcomes)
                if reason:
                    outcomes[run.run_id] = RunOutcome(run.run_id, "pending", "blocked", reason=reason)
                    self._finished += 1
                    self.log(f"[{self._finished}/{self._total}] {_names(run)} not started: {reason} (run {run.run_id})")
                else:
                    ready.append(run)
            for group in _group_by_parameters(ready, self.parameters):
                for start in range(0, len(group), self.parallelism):
                    chunk = group[start : start + self.parallelism]
                    self._submit_chunk(wave_index, chunk, outcomes, dry_run)

    def _execute_slots(
        self, plan: Plan, pending: list[PlannedRun], foreign: dict[str, RunDir], outcomes: dict[str, RunOutcome],
    ) -> None:
        """Keep ``parallelism`` local jobs busy: start a run as soon as a slot is free and its
        dependencies are done (waiting for a whole wave left a core idle behind the slower job of each
        pair); among the ready runs, those that more runs depend on (transitively) go first, then those with
        more test views (clips x crops: a 4 x 3 evaluation scores every video 12 times, and started last it
        would run alone while the other slots idle)."""
        wave_of = {r.run_id: k for k, wave in enumerate(plan.waves()) for r in wave}
        weight = _dependent_counts(plan)
        position = {r.run_id: i for i, r in enumerate(plan.runs)}
        todo = sorted(pending, key=lambda r: (-weight[r.run_id], -views_per_video(r), position[r.run_id]))
        running: dict[str, tuple[PlannedRun, submitit.Job]] = {}
        elsewhere = dict(foreign)
        poll_s = min(self.poll_s, LOCAL_POLL_S)
        for rd in elsewhere.values():
            self.log(f"[{rd.run_id}] already running ({(rd.last_submission() or {}).get('job_id')}); waiting")
        while todo or running or elsewhere:
            changed = False
            for rid, rd in list(elsewhere.items()):
                state = self._foreign_state(rd)
                if state is not None:
                    outcomes[rid].state = state
                    del elsewhere[rid]
                    changed = True
            for rid, (run, job) in list(running.items()):
                if job.done():
                    outcomes[rid] = self._finish(run, job)
                    del running[rid]
                    changed = True
            for run in list(todo):
                # a dependency another invocation still runs blocks nothing yet: wait for its end
                reason = None if any(d in elsewhere for d in run.dependencies) else self._blocked(run, outcomes)
                if reason:
                    todo.remove(run)
                    outcomes[run.run_id] = RunOutcome(run.run_id, "pending", "blocked", reason=reason)
                    self._finished += 1
                    self.log(f"[{self._finished}/{self._total}] {_names(run)} not started: {reason} (run {run.run_id})")
                    changed = True
            ready = [r for r in todo if all(d in outcomes and outcomes[d].state == "done" for d in r.dependencies)]
            start = ready[: self.parallelism - len(running)]
            for group in _group_by_parameters(start, self.parameters):
                wave = min(wave_of[r.run_id] for r in group)
                for run, job in self._start(wave, group):
                    running[run.run_id] = (run, job)
                    todo.remove(run)
                changed = True
            if not running and not elsewhere and todo and not start:
                for run in todo:  # cannot happen with a valid plan; never spin on it
                    outcomes[run.run_id] = RunOutcome(run.run_id, "pending", "blocked", reason="dependencies never finished")
                break
            if not changed:
                time.sleep(poll_s)

    def _foreign_state(self, rd: RunDir) -> Optional[str]:
        """The terminal state of a run another invocation submitted, or None while its job is alive."""
        state = rd.state()
        if state in TERMINAL_STATES:
            return state
        if recorded_job_state(rd) != "active":
            time.sleep(self.poll_s)  # let a just-finished job's last write land
            state = rd.state()
            return state if state in TERMINAL_STATES else "failed"
        return None

    def _start(self, wave: int, chunk: list[PlannedRun]) -> list[tuple[PlannedRun, submitit.Job]]:
        """Submit ``chunk`` (runs with the same parameters) as one job array; record each submission."""
        params = self.parameters(chunk[0])
        sub = Submission(wave, [r.run_id for r in chunk], params)
        self.submissions.append(sub)
        assert self.folder is not None
        ex = make_executor(self.cluster, self.folder / "%j", self.resources(chunk[0]), params)
        with ex.batch():
            jobs = [ex.submit(self._job(run)) for run in chunk]
        for run, job in zip(chunk, jobs):
            RunDir(run.run_dir).record_submission(self.cluster, job.job_id, self.folder)
            sub.job_ids.append(str(job.job_id))
            self._submitted_at[run.run_id] = time.time()
            self.log(f"[{run.run_id}] submitted ({self.cluster} job {job.job_id}): {', '.join(f'{s}.{v}' for s, v in run.requested_by)}")
        return list(zip(chunk, jobs))

    def _submit_chunk(self, wave: int, chunk: list[PlannedRun], outcomes: dict[str, RunOutcome], dry_run: bool) -> None:
        if dry_run:
            self.submissions.append(Submission(wave, [r.run_id for r in chunk], self.parameters(chunk[0])))
            for run in chunk:
                outcomes[run.run_id] = RunOutcome(run.run_id, "planned", "dry-run")
            return
        for run, job in self._start(wave, chunk):
            outcomes[run.run_id] = self._finish(run, job)

    def _finish(self, run: PlannedRun, job: submitit.Job) -> RunOutcome:
        """Wait for ``job`` and make sure its run directory ends in a terminal state."""
        error: Optional[BaseException] = None
        if self.cluster == "debug":
            error = job.exception()  # runs the job in this process (no pdb)
        else:
            while not job.done():
                time.sleep(self.poll_s)
            try:
                error = job.exception()
            except Exception as exc:  # noqa: BLE001 - e.g. UncompletedJobError for a killed job
                error = exc
        rd = RunDir(run.run_dir)
        state = rd.state()
        reason = ""
        if state not in TERMINAL_STATES:
            cancelled = self.cluster == "slurm" and str(getattr(job, "state", "")).startswith("CANCELLED")
            state = "cancelled" if cancelled else "failed"
            reason = f"job {job.job_id} ended without recording a result" + (f": {error}" if error else "")
            rd.write_state(state, job_id=str(job.job_id), reason=reason[:2000])
        elif state == "failed":
            reason = str(rd.read_state().get("reason", ""))
        self._finished += 1
        self.log(finished_line(run, state, reason, self._finished, self._total, rd.result() if state == "done" else None,
                               time.time() - self._submitted_at.get(run.run_id, time.time())))
        return RunOutcome(run.run_id, state, "submitted", str(job.job_id), reason)

    def _wait_foreign(self, rd: RunDir) -> str:
        """Poll a run another invocation submitted until it ends (or its job disappears)."""
        self.log(f"[{rd.run_id}] already running ({(rd.last_submission() or {}).get('job_id')}); waiting")
        while True:
            state = self._foreign_state(rd)
            if state is not None:
                return state
            time.sleep(self.poll_s)

    def _execute_slurm(
        self, plan: Plan, pending: list[PlannedRun], foreign: dict[str, RunDir],
        outcomes: dict[str, RunOutcome], dry_run: bool,
    ) -> None:
        todo = {r.run_id for r in pending}
        job_of: dict[str, str] = {rid: str(o.job_id) for rid, o in outcomes.items() if o.action == "waited" and o.job_id}
        submitted: list[tuple[PlannedRun, submitit.Job]] = []
        for wave_index, wave in enumerate(plan.waves()):
            runs = [r for r in wave if r.run_id in todo]

            def params_of(run: PlannedRun) -> dict[str, Any]:
                deps = sorted(job_of[d] for d in run.dependencies if d in job_of)
                return self.parameters(run, dependency=deps)

            for group in _group_by_parameters(runs, params_of):
                params = params_of(group[0])
                sub = Submission(wave_index, [r.run_id for r in group], params)
                self.submissions.append(sub)
                if dry_run:
                    for run in group:
                        outcomes[run.run_id] = RunOutcome(run.run_id, "planned", "dry-run")
                        job_of[run.run_id] = f"<{run.run_id}>"
                    continue
                assert self.folder is not None
                ex = make_executor("slurm", self.folder / "%j", self.resources(group[0]), params)
                with ex.batch():
                    jobs = [ex.submit(self._job(run)) for run in group]
                for run, job in zip(group, jobs):
                    job_of[run.run_id] = str(job.job_id)
                    sub.job_ids.append(str(job.job_id))
                    RunDir(run.run_dir).record_submission("slurm", job.job_id, self.folder)
                    self._submitted_at[run.run_id] = time.time()
                    self.log(f"[{run.run_id}] submitted (slurm job {job.job_id}): {_names(run)}")
                    submitted.append((run, job))
        for rid, rd in foreign.items():
            outcomes[rid].state = self._wait_foreign(rd)
        for run, job in submitted:
            outcomes[run.run_id] = self._finish(run, job)


def _names(run: PlannedRun) -> str:
    return ", ".join(f"{s}.{v}" for s, v in run.requested_by)


#: Metrics a finished run is summed up by when none of its cells names one (the first its result has).
#: The headline of a run without a table cell: the first of these in its metrics (zero-shot: the split means).
#: top1 before mAP: a single-label result also carries mAP (ActivityNet's), a multi-label one only mAP.
HEADLINE_METRICS = ("zs_half_mean", "zs_k600_mean", "top1", "mAP")


def format_duration(seconds: Optional[float]) -> str:
    """``14s``, ``3m05s``, ``2h03m``; ``""`` when unknown."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0 or not math.isfinite(seconds):
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def headline(run: PlannedRun, result: Optional[Mapping[str, Any]]) -> str:
    """``video_top1 67.7``: the metric of the run's first table cell (else a :data:`HEADLINE_METRICS`)."""
    metrics = (result or {}).get("metrics") or {}
    for name in [c.metric for c in run.cells] + list(HEADLINE_METRICS):
        value = metrics.get(name, (result or {}).get(name))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return f"{name} {value:.1f}"
    return ""


def finished_line(run: PlannedRun, state: str, reason: str, k: int, n: int, result: Optional[Mapping[str, Any]],
                  wall_s: float) -> str:
    """``[3/15] table6.vcs done in 1m23s: video_top1 67.7 (run 49af41006856)``; a failure gives its reason."""
    elapsed = (result or {}).get("elapsed_s", wall_s)
    text = f"[{k}/{n}] {_names(run)} {state} in {format_duration(elapsed) or '?'}"
    if state == "done":
        head = headline(run, result)
        text += f": {head}" if head else ""
    elif reason:
        text += f": {reason.splitlines()[0][:200]}"
    return text + f" (run {run.run_id})"


def views_per_video(run: PlannedRun) -> int:
    """How many views of each video the run's evaluation scores (``eval.clips`` x ``eval.crops``)."""
    return run.config.eval.clips * run.config.eval.crops


def _dependent_counts(plan: Plan) -> dict[str, int]:
    """For each run of ``plan``, how many runs depend on it, directly or through others."""
    children: dict[str, set[str]] = {r.run_id: set() for r in plan.runs}
    for run in plan.runs:
        for dep in run.dependencies:
            children.setdefault(dep, set()).add(run.run_id)
    memo: dict[str, set[str]] = {}

    def below(rid: str) -> set[str]:
        if rid not in memo:
            memo[rid] = set()
            for child in children.get(rid, ()):
                memo[rid] |= {child} | below(child)
        return memo[rid]

    return {r.run_id: len(below(r.run_id)) for r in plan.runs}


def _group_by_parameters(
    runs: Sequence[PlannedRun], params_of: Callable[[PlannedRun], dict[str, Any]]
) -> list[list[PlannedRun]]:
    """Runs with identical submission parameters, in order (one job array each)."""
    groups: dict[str, list[PlannedRun]] = {}
    for run in runs:
        key = repr(sorted(params_of(run).items()))
        groups.setdefault(key, []).append(run)
    return list(groups.values())
