"""A small results store as the harness writes it, for the MLflow layout and browser tests: a spec of
three Table 6 variants (two stage-1 runs, one stage-2 run that starts from the second), their run
directories (metrics lines, result.json, a picture under figures/, the job's state history), replayed
with ``bikebench sync`` and ended with the table's parent run (:meth:`harness.tracking.Tracker.log_table`)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bike.config import RunConfig
from harness.rundir import RunDir, atomic_write_json
from harness.tracking import Tracker, default_tracking_uri, sync

SPEC = "ablate"
#: variant -> (description, cells, result metrics of the val split)
VARIANTS = {
    "mean_pool": ("Baseline: mean pool, no temporal transformer", [("6a", "mean_pool", "top1", "video_top1")],
                  {"video_top1": 71.5, "video_top5": 96.25, "top1": 71.5}),
    "vcs": ("+ Video Concept Spotting", [("6a", "vcs", "top1", "video_top1"), ("6b", "word_cls", "top1", "video_top1")],
            {"video_top1": 74.25, "video_top5": 97.0, "top1": 74.25}),
    "bike": ("Both branches: attributes trained from the vcs run", [("6e", "trained", "V+A", "fused_top1"), ("6e", "trained", "A", "attr_top1")],
             {"video_top1": 74.25, "attr_top1": 40.5, "fused_top1": 76.75, "top1": 76.75}),
}
# MLflow-view substrings a reader must find: the names, a cell, a headline value
EXPECTED_NAMES = [f"{SPEC}.{v}" for v in VARIANTS]


def write_spec(path: Path) -> Path:
    body = {"name": SPEC, "family": "general", "description": "A small Table 6 for the MLflow tests",
            "dataset": {"name": "k400", "root": "/d", "val_list": "/d/val.txt", "class_file": "/d/c.csv"},
            "variants": {v: {"description": d, "cells": [{"table": t, "row": r, "column": c, "metric": m} for t, r, c, m in cells]}
                         for v, (d, cells, _) in VARIANTS.items()}}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def make_run(results: Path, spec_path: Path, variant: str, frames: int, init_from: str | None = None) -> RunDir:
    cfg = RunConfig.model_validate({"name": f"{SPEC}.{variant}", "model": {"frames": frames},
                                    **({"init_from": init_from, "stage": "attributes"} if init_from else {})})
    rd = RunDir.for_run(results, cfg.content_hash())
    rd.prepare(cfg.to_yaml(), {"requested_by": [{"spec": SPEC, "variant": variant, "scale": "smoke"}],
                               "code": {"commit": "c" * 40, "dirty": False}, "scale": "smoke",
                               "spec_path": str(spec_path), "dependencies": [Path(init_from).name] if init_from else []})
    return rd


def run_job(rd: RunDir, metrics: dict, steps: int = 3, figure: bool = True) -> None:
    """What a job leaves: the running state, training lines, a picture, the result, done."""
    rd.record_submission("local", "77", rd.path.parent)
    rd.write_state("running", job_id="77")
    with open(rd.metrics_path, "a") as fh:
        for step in range(1, steps + 1):
            fh.write(json.dumps({"kind": "train", "step": step, "loss": 1.0 / step, "epoch": step / steps}) + "\n")
        fh.write(json.dumps({"kind": "final", "split": "val", "step": steps, **metrics}) + "\n")
    if figure:
        figures = rd.path / "figures"
        figures.mkdir(exist_ok=True)
        (figures / "confusion.png").write_bytes(PNG)
        (figures / "confusion.json").write_text(json.dumps({"kind": "confusion", "classes": 2}))
    atomic_write_json(rd.result_path, {"status": "done", "split": "val", "metrics": metrics, "splits": {"val": metrics},
                                       "counts": {"evaluated": 12, "skipped": 0}, "steps": steps})
    rd.write_state("done")


#: A 1x1 PNG.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5e2b6a70000000049454e44ae426082")


def build_store(results: Path) -> dict[str, RunDir]:
    """Run directories of the three variants, synced, and the table's parent run; returns them by variant."""
    results.mkdir(parents=True, exist_ok=True)
    spec_path = write_spec(results.parent / f"{SPEC}.yaml")
    runs = {"mean_pool": make_run(results, spec_path, "mean_pool", 2), "vcs": make_run(results, spec_path, "vcs", 4)}
    runs["bike"] = make_run(results, spec_path, "bike", 4, init_from=str(runs["vcs"].path))
    for variant, rd in runs.items():
        run_job(rd, VARIANTS[variant][2])
    uri = default_tracking_uri(results)
    report = sync(results, uri)
    assert not report.failed, report.failed
    cells = [{"table": t, "row": r, "column": c, "value": VARIANTS[v][2][m], "scale": "smoke"}
             for v, (_, cs, _) in VARIANTS.items() for t, r, c, m in cs]
    (results / "table6.md").write_text("# Table 6\n")
    Tracker(results, uri).log_table(SPEC, "smoke", cells, [results / "table6.md"],
                                    params={"spec": SPEC, "scale": "smoke", "profile": "official", "git_commit": "c" * 40})
    return runs
