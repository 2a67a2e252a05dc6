"""The runner with real submitit jobs: local (subprocesses) and debug (in process); SLURM in tests/slurm.

The job function here stands in for the engine: it checkpoints its progress to
``run_dir/checkpoints/latest.json`` after every step and resumes from it, appends ``metrics.jsonl``
lines and writes ``result.json`` last, so resume, requeue and skip behaviour can be checked end to end.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import yaml

from harness.executor import (
    Runner,
    local_parameters,
    make_executor,
    parse_slurm_time,
    recorded_job_state,
    run_status,
    signal_delay,
    slurm_parameters,
    views_per_video,
)
from harness.expand import expand
from harness.jobs import RunJob, import_target, job_target, register_job_kind, reset_job_kinds
from harness.rundir import RunDir
from harness.spec import ResourceSpec, SlurmSpec, load_spec

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # jobs unpickle this module's functions by value


def fake_engine(config, run_dir, steps: int = 3, sleep_s: float = 0.0, fail_marker: str = "",
                resumed_sleep_s: float | None = None) -> dict:
    """A resumable stand-in for bike.train.run / bike.evaluate.run (``resumed_sleep_s``: step time
    after a resume, so that a first attempt outlasts its time limit and a resumed one does not)."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "latest.json"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    start = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
    with open(run_dir / "calls.log", "a") as log:
        log.write(f"start {start}\n")
    if config.init_from:  # a dependency must be finished before its dependant starts
        assert (Path(config.init_from) / "result.json").exists(), "dependency not finished"
    if start > 0 and resumed_sleep_s is not None:
        sleep_s = resumed_sleep_s
    for step in range(start, steps):
        time.sleep(sleep_s)
        if fail_marker and Path(fail_marker).exists() and step == 1:
            raise RuntimeError("simulated crash mid-run")
        with open(run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step + 1, "loss": 1.0 / (step + 1)}) + "\n")
        ckpt.write_text(json.dumps({"step": step + 1}))
    result = {"status": "done", "video_top1": 40.0 + config.model.frames, "steps": steps}
    (run_dir / "result.json").write_text(json.dumps(result))
    with open(run_dir / "calls.log", "a") as log:
        log.write("finish\n")
    return result


def write_spec(path: Path, variants: dict, resources: dict | None = None) -> Path:
    body = {"name": "sweep", "family": "general",
            "dataset": {"name": "k400", "root": "/d", "val_list": "/d/val.txt", "class_file": "/d/c.csv"},
            "variants": variants}
    if resources:
        body["resources"] = resources
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def runs_by_variant(plan):
    return {run.requested_by[0][1]: run for run in plan.runs}


def calls(run) -> list[str]:
    path = Path(run.run_dir) / "calls.log"
    return path.read_text().split("\n")[:-1] if path.exists() else []


SWEEP = {
    "a": {"set": {"model.frames": 2}},
    "b": {"set": {"model.frames": 4}},
    "c": {"set": {"model.frames": 6}},
    "d": {"stage": "attributes", "init_from": {"variant": "b"}},
}
FAST = {"full": {"timeout_min": 2}}


def test_local_sweep_runs_in_order_then_skips_done(tmp_path):
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", SWEEP, FAST)), "full", tmp_path / "r")
    engine = functools.partial(fake_engine, steps=2)
    runner = Runner(tmp_path / "r", "local", job_targets={"train": engine}, parallelism=3, poll_s=0.1, log=lambda m: None)
    outcomes = runner.execute(plan)
    assert {o.state for o in outcomes.values()} == {"done"}
    assert all(o.action == "submitted" for o in outcomes.values())
    by = runs_by_variant(plan)
    for run in plan.runs:
        rd = RunDir(run.run_dir)
        assert rd.is_done() and rd.state() == "done"
        assert rd.last_submission()["cluster"] == "local"
        assert [h["state"] for h in rd.read_state()["history"]] == ["pending", "running", "done"]
    assert RunDir(by["a"].run_dir).result()["video_top1"] == 42.0
    # one job array of 3 (a, b, c) in wave 0, then d in wave 1; one folder per invocation
    assert [(s.wave, len(s.run_ids)) for s in runner.submissions] == [(0, 3), (1, 1)]
    folders = {RunDir(r.run_dir).last_submission()["folder"] for r in plan.runs}
    assert len(folders) == 1 and runner.folder is not None and str(runner.folder) in folders

    again = Runner(tmp_path / "r", "local", job_targets={"train": engine}, poll_s=0.1, log=lambda m: None)
    outcomes2 = again.execute(plan)
    assert {o.action for o in outcomes2.values()} == {"skipped-done"}
    assert again.submissions == []
    assert all(calls(r) == ["start 0", "finish"] for r in plan.runs)  # nothing ran twice


def timed_engine(config, run_dir) -> dict:
    """A job that lasts ``model.frames / 4`` seconds and records when it started and ended."""
    run_dir = Path(run_dir)
    if config.init_from:
        assert (Path(config.init_from) / "result.json").exists(), "dependency not finished"
    start = time.time()
    time.sleep(config.model.frames / 4)
    (run_dir / "span.json").write_text(json.dumps([start, time.time()]))
    result = {"status": "done", "video_top1": 40.0 + config.model.frames}
    (run_dir / "result.json").write_text(json.dumps(result))
    return result


def test_local_runs_start_as_soon_as_a_slot_and_their_dependencies_are_free(tmp_path):
    """Two slots, no waves: the dependant of the fast run starts while the slow run of the first
    wave still runs, never more than two jobs run at once, and the run others depend on goes first."""
    variants = {
        "lone": {"set": {"model.frames": 3}},
        "slow": {"set": {"model.frames": 32}},
        "fast": {"set": {"model.frames": 2}},
        "after_fast": {"stage": "attributes", "init_from": {"variant": "fast"}, "set": {"model.frames": 2}},
        "after_that": {"stage": "attributes", "init_from": {"variant": "after_fast"}, "set": {"model.frames": 2}},
    }
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", variants, FAST)), "full", tmp_path / "r")
    targets = {"train": timed_engine}
    runner = Runner(tmp_path / "r", "local", job_targets=targets, parallelism=2, poll_s=0.1, log=lambda m: None)
    outcomes = runner.execute(plan)
    assert {o.state for o in outcomes.values()} == {"done"}
    by = runs_by_variant(plan)
    span = {v: json.loads((Path(r.run_dir) / "span.json").read_text()) for v, r in by.items()}
    # `fast` has two runs after it, `slow` and `lone` none: `fast` starts first, with `lone` (plan order)
    assert runner.submissions[0].run_ids == [by["fast"].run_id, by["lone"].run_id]
    # the chain after `fast` runs beside `slow` instead of waiting for the end of its wave
    assert span["after_fast"][0] < span["slow"][1] and span["after_that"][0] < span["slow"][1]
    events = sorted([(t0, 1) for t0, _ in span.values()] + [(t1, -1) for _, t1 in span.values()])
    running = [sum(d for _, d in events[: i + 1]) for i in range(len(events))]
    assert max(running) <= 2
    assert {s.wave for s in runner.submissions} == {0, 1, 2}


def test_among_equally_needed_runs_the_longest_evaluation_starts_first(tmp_path):
    """No run depends on any of these: the 4 x 3-view evaluation goes out before the single-view ones
    (plan order), so that it does not run alone at the end while the other slot idles."""
    variants = {
        "one_view": {"set": {"model.frames": 2}},
        "crops": {"set": {"model.frames": 2, "eval.crops": 3}},
        "other_view": {"set": {"model.frames": 3}},
        "multi_view": {"set": {"model.frames": 2, "eval.clips": 4, "eval.crops": 3}},
    }
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", variants, FAST)), "full", tmp_path / "r")
    by = runs_by_variant(plan)
    assert [views_per_video(by[v]) for v in variants] == [1, 3, 1, 12]
    runner = Runner(tmp_path / "r", "local", job_targets={"train": timed_engine}, parallelism=1, poll_s=0.1,
                    log=lambda m: None)
    assert {o.state for o in runner.execute(plan).values()} == {"done"}
    started = [rid for s in runner.submissions for rid in s.run_ids]
    assert started == [by[v].run_id for v in ("multi_view", "crops", "one_view", "other_view")]


def test_a_run_waits_for_its_dependency_running_in_another_invocation(tmp_path):
    """A dependency another invocation is running is waited for (never duplicated), and its dependant
    starts once it is done instead of being reported blocked."""
    import threading

    from harness.expand import Plan

    variants = {"first": {"set": {"model.frames": 16}},
                "after": {"stage": "attributes", "init_from": {"variant": "first"}, "set": {"model.frames": 2}}}
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", variants, FAST)), "full", tmp_path / "r")
    by = runs_by_variant(plan)
    targets = {"train": timed_engine}
    alone = Plan(plan.scale, plan.results, [by["first"]], specs=plan.specs)
    other = threading.Thread(target=lambda: Runner(tmp_path / "r", "local", job_targets=targets, poll_s=0.1,
                                                   log=lambda m: None).execute(alone))
    other.start()
    first = RunDir(by["first"].run_dir)
    deadline = time.time() + 60
    while recorded_job_state(first) != "active" and time.time() < deadline:
        time.sleep(0.05)
    assert recorded_job_state(first) == "active"
    logs: list[str] = []
    runner = Runner(tmp_path / "r", "local", job_targets=targets, parallelism=2, poll_s=0.1, log=logs.append)
    outcomes = runner.execute(plan)
    other.join()
    assert outcomes[by["first"].run_id].action == "waited" and outcomes[by["first"].run_id].state == "done"
    assert outcomes[by["after"].run_id].state == "done" and outcomes[by["after"].run_id].action == "submitted"
    assert [s.run_ids for s in runner.submissions] == [[by["after"].run_id]]
    assert any("already running" in line for line in logs)
    assert len(first.submissions()) == 1


def test_crash_mid_sweep_keeps_finished_runs_and_rerun_resumes(tmp_path):
    marker = tmp_path / "crash"
    marker.touch()
    variants = {
        "ok": {"set": {"model.frames": 2}},
        "crashy": {"set": {"model.frames": 4, "seed": 7}},
        "after": {"stage": "attributes", "init_from": {"variant": "crashy"}},
    }
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", variants, FAST)), "full", tmp_path / "r")
    by = runs_by_variant(plan)

    def target(config, run_dir):
        return fake_engine(config, run_dir, steps=3, fail_marker=str(marker) if config.seed == 7 else "")

    logs: list[str] = []
    runner = Runner(tmp_path / "r", "local", job_targets={"train": target}, parallelism=2, poll_s=0.1, log=logs.append)
    out = runner.execute(plan)
    assert out[by["ok"].run_id].state == "done"
    assert out[by["crashy"].run_id].state == "failed"
    assert "simulated crash" in RunDir(by["crashy"].run_dir).read_state()["reason"]
    assert out[by["after"].run_id].state == "pending" and out[by["after"].run_id].action == "blocked"
    assert calls(by["after"]) == []
    assert run_status(RunDir(by["crashy"].run_dir)) == "failed"

    marker.unlink()
    out2 = Runner(tmp_path / "r", "local", job_targets={"train": target}, poll_s=0.1, log=logs.append).execute(plan)
    assert out2[by["ok"].run_id].action == "skipped-done"
    assert {o.state for o in out2.values()} == {"done"}
    assert calls(by["ok"]) == ["start 0", "finish"]
    assert calls(by["crashy"]) == ["start 0", "start 1", "finish"]  # resumed from its checkpoint
    steps = [m["step"] for m in RunDir(by["crashy"].run_dir).metrics()]
    assert steps == [1, 2, 3]


def test_timeout_checkpoints_requeues_and_finishes_once(tmp_path):
    """A real local timeout: the job gets the checkpoint signal, is requeued, resumes and ends once."""
    # the checkpoint signal comes 4 s after each (re)start; a first attempt needs 15 s, a resumed one ~0 s
    resources = {"full": {"timeout_min": 8 / 60, "signal_delay_s": 4, "max_num_timeout": 5}}
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", {"slow": {}}, resources)), "full", tmp_path / "r")
    run = plan.runs[0]
    steps = 60
    target = functools.partial(fake_engine, steps=steps, sleep_s=0.25, resumed_sleep_s=0.0)
    out = Runner(tmp_path / "r", "local", job_targets={"train": target}, poll_s=0.2, log=lambda m: None).execute(plan)
    assert out[run.run_id].state == "done"
    log = calls(run)
    assert log[0] == "start 0" and log[-1] == "finish" and log.count("finish") == 1
    resumed = [int(line.split()[1]) for line in log if line.startswith("start")][1:]
    assert resumed and all(step > 0 for step in resumed)  # later attempts resumed from the checkpoint
    states = [h["state"] for h in RunDir(run.run_dir).read_state()["history"]]
    assert "requeued" in states and states[-1] == "done"
    assert RunDir(run.run_dir).read_state()["attempts"] == len(resumed) + 1
    assert [m["step"] for m in RunDir(run.run_dir).metrics()] == list(range(1, steps + 1))


def test_debug_executor_runs_in_process(tmp_path):
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", SWEEP, FAST)), "full", tmp_path / "r")
    seen: list[str] = []

    def target(config, run_dir):
        seen.append(Path(run_dir).name)  # a closure over this process's list: only works in-process
        return fake_engine(config, run_dir, steps=1)

    out = Runner(tmp_path / "r", "debug", job_targets={"train": target}, log=lambda m: None).execute(plan)
    assert {o.state for o in out.values()} == {"done"}
    assert seen == [r.run_id for r in plan.runs]


def test_dry_run_submits_nothing_and_groups_arrays(tmp_path):
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", SWEEP, FAST)), "full", tmp_path / "r")
    runner = Runner(tmp_path / "r", "slurm", log=lambda m: None)
    out = runner.execute(plan, dry_run=True)
    assert {o.action for o in out.values()} == {"dry-run"}
    assert not (tmp_path / "r" / "runs").exists()
    assert [(s.wave, len(s.run_ids)) for s in runner.submissions] == [(0, 3), (1, 1)]
    assert "dependency" not in runner.submissions[0].parameters
    b = runs_by_variant(plan)["b"].run_id
    assert runner.submissions[1].parameters["dependency"] == f"afterok:<{b}>"


def test_slurm_and_local_parameters(monkeypatch):
    res = ResourceSpec(timeout_min=90.5, max_num_timeout=2,
                       slurm=SlurmSpec(partition="gpu", gpus_per_node=8, tasks_per_node=8, cpus_per_task=10, mem="400G",
                                       account="acc", qos="high", array_parallelism=4, additional={"reservation": "r1"}))
    p = slurm_parameters(res, "bike-x", dependency=["12_0", "13"])
    assert p["time"] == 91 and p["partition"] == "gpu" and p["ntasks_per_node"] == 8 and p["array_parallelism"] == 4
    assert p["dependency"] == "afterok:12_0:13"
    assert p["additional_parameters"] == {"reservation": "r1", "kill_on_invalid_dep": "yes"}
    assert p["signal_delay_s"] == 120
    assert slurm_parameters(ResourceSpec(timeout_min=60, slurm=SlurmSpec(time="1-02:00:00")), "x")["time"] == 26 * 60
    assert [parse_slurm_time(t) for t in (30, "45", "01:30", "02:00:30", "2-0")] == [30, 45, 2, 121, 2880]
    assert signal_delay(ResourceSpec(timeout_min=0.1)) == 1
    assert local_parameters(ResourceSpec(timeout_min=0.5))["timeout_min"] == 0.5
    with pytest.raises(ValueError, match="timeout_min"):
        local_parameters(ResourceSpec())
    # a checkpoint signal that may come while the SLURM job is still starting is refused
    with pytest.raises(ValueError, match=r"signal_delay_s=90 with a 2-min SLURM limit.*signal_delay_s <= 60"):
        slurm_parameters(ResourceSpec(timeout_min=2, signal_delay_s=90), "x")
    with pytest.raises(ValueError, match=r"signal_delay_s=15 with a 1-min SLURM limit.*timeout_min >= 2"):
        slurm_parameters(ResourceSpec(timeout_min=1), "x")   # the default delay (1/4) cannot be safe in 1 min
    assert slurm_parameters(ResourceSpec(timeout_min=2, signal_delay_s=60), "x")["signal_delay_s"] == 60
    assert slurm_parameters(ResourceSpec(timeout_min=2), "x")["signal_delay_s"] == 30   # default: 1/4 of it
    # the sbatch script is written without a cluster: only submitit's check for `srun` on PATH is stubbed
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    ex = make_executor("slurm", Path("/tmp/never-used/%j"), res, p)
    assert type(ex) is submitit.SlurmExecutor  # named explicitly, never AutoExecutor
    text = ex._make_submission_file_text("python -m x", "uid")
    for line in ("--dependency=afterok:12_0:13", "--time=91", "--partition=gpu", "--reservation=r1",
                 "--kill-on-invalid-dep=yes", "--signal=USR2@120", "--account=acc", "--qos=high", "--mem=400G"):
        assert line in text
    with pytest.raises(ValueError, match="expected one of"):
        Runner("/tmp/x", "auto")


def test_job_kind_registry_and_run_job_skips_done(tmp_path):
    assert job_target("train") == "bike.train:run" and job_target("evaluate") == "bike.evaluate:run"
    register_job_kind("custom", "json:dumps")
    try:
        assert import_target(job_target("custom")) is json.dumps
        with pytest.raises(KeyError, match="unknown job kind"):
            job_target("nope")
        with pytest.raises(ImportError, match="cannot be imported"):
            import_target("no_such_module_xyz:run")
    finally:
        reset_job_kinds()
    assert pytest.raises(KeyError, job_target, "custom")
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    (rd.path / "result.json").write_text(json.dumps({"status": "done", "x": 1}))
    assert RunJob(rd.path, "name: a\n", lambda c, d: pytest.fail("must not run"))() == {"status": "done", "x": 1}


def test_status_reads_dead_local_jobs_as_failed(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.prepare("name: a\n", {})
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    rd.record_submission("local", str(proc.pid), tmp_path)
    rd.write_state("running", job_id=str(proc.pid))
    assert recorded_job_state(rd) == "gone"
    assert run_status(rd) == "failed"
    rd.record_submission("slurm", "77", tmp_path)
    assert run_status(rd, sacct=lambda ids: {"77": "CANCELLED"}) == "cancelled"
    assert run_status(rd, sacct=lambda ids: {"77": "RUNNING"}) == "running"


def threads_engine(config, run_dir) -> dict:
    """Records the torch threads and OMP_NUM_THREADS the job runs with."""
    import os as _os

    import torch

    result = {"status": "done", "threads": torch.get_num_threads(), "omp": _os.environ.get("OMP_NUM_THREADS")}
    (Path(run_dir) / "result.json").write_text(json.dumps(result))
    return result


def test_local_jobs_share_the_cores_instead_of_oversubscribing(tmp_path, monkeypatch):
    monkeypatch.setattr("harness.executor.os.cpu_count", lambda: 8)
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", {"a": {}, "b": {"set": {"model.frames": 4}}}, FAST)), "full", tmp_path / "r")
    run = plan.runs[0]
    assert Runner(tmp_path / "r", "local", parallelism=2).job_threads(run) == 4
    assert Runner(tmp_path / "r", "local", parallelism=16).job_threads(run) == 1
    assert Runner(tmp_path / "r", "slurm").job_threads(run) is None  # read from SLURM_CPUS_PER_TASK in the job
    pinned = ResourceSpec(slurm=SlurmSpec(cpus_per_task=3))
    assert Runner(tmp_path / "r", "slurm", resources=pinned).job_threads(run) == 3
    assert Runner(tmp_path / "r", "local", parallelism=2, resources=pinned).job_threads(run) == 3
    # the jobs themselves run with the threads they were given (real subprocesses: one thread each)
    monkeypatch.setattr("harness.executor.os.cpu_count", lambda: 2)
    runner = Runner(tmp_path / "r", "local", job_targets={"train": threads_engine}, parallelism=2, poll_s=0.1, log=lambda m: None)
    outcomes = runner.execute(plan)
    assert {o.state for o in outcomes.values()} == {"done"}
    for r in plan.runs:
        assert RunDir(r.run_dir).result()["threads"] == 1
        assert RunDir(r.run_dir).result()["omp"] == "1"


def test_job_threads_follow_the_slurm_allocation(monkeypatch):
    from harness.jobs import job_threads

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert job_threads(None) is None
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert job_threads(None) == 6
    assert job_threads(2) == 2  # an explicit request wins
    with pytest.raises(ValueError, match="threads=0"):
        job_threads(0)


def shared_cache_engine(config, run_dir) -> dict:
    """Records the cross-run store directory the job sees."""
    import os as _os

    result = {"status": "done", "shared": _os.environ.get("BIKE_SHARED_CACHE")}
    (Path(run_dir) / "result.json").write_text(json.dumps(result))
    return result


def test_jobs_see_the_results_directorys_shared_cache(tmp_path, monkeypatch):
    from bike.engine.attributes_cache import SHARED_CACHE_ENV
    from harness.jobs import SHARED_CACHE_ENV as HARNESS_NAME

    assert HARNESS_NAME == SHARED_CACHE_ENV  # the harness names bike's variable without importing torch
    monkeypatch.delenv(SHARED_CACHE_ENV, raising=False)
    plan = expand(load_spec(write_spec(tmp_path / "s.yaml", {"a": {}}, FAST)), "full", tmp_path / "r")
    Runner(tmp_path / "r", "debug", job_targets={"train": shared_cache_engine}, log=lambda m: None).execute(plan)
    assert RunDir(plan.runs[0].run_dir).result()["shared"] == str((tmp_path / "r" / "cache").resolve())
    import os as _os

    assert SHARED_CACHE_ENV not in _os.environ  # restored after an in-process (debug) job
    monkeypatch.setenv(SHARED_CACHE_ENV, str(tmp_path / "mine"))  # a user's choice is kept
    plan2 = expand(load_spec(write_spec(tmp_path / "s2.yaml", {"b": {"set": {"model.frames": 4}}}, FAST)), "full", tmp_path / "r")
    Runner(tmp_path / "r", "debug", job_targets={"train": shared_cache_engine}, log=lambda m: None).execute(plan2)
    assert RunDir(plan2.runs[0].run_dir).result()["shared"] == str(tmp_path / "mine")
