"""The MLflow layout of a table (issue #18): children named and ordered as the table, the cells they
fill, headline metrics once at step 0 in percent, the job's times, pictures, the init_from link, the
parent run as the table, runs created when their job starts, and a moved store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.mlflow_runs import (
    TAG_CELLS,
    TAG_INIT_FROM_RUN,
    TAG_NOTE,
    TAG_ORDER,
    TAG_PARENT_KEY,
    TAG_PARENT_RUN,
    TAG_RUN_ID,
    TAG_TABLES,
    headline_metrics,
    runs_view_link,
)
from harness.tracking import Tracker, default_tracking_uri, job_times, rebase_store, sync
from tests.harness.mlflow_store import SPEC, VARIANTS, build_store, make_run, run_job, write_spec


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    results = tmp_path_factory.mktemp("layout") / "results"
    runs = build_store(results)
    tracker = Tracker(results, default_tracking_uri(results))
    exp = tracker.client.get_experiment_by_name(SPEC)
    children = {r.data.tags[TAG_RUN_ID]: r for r in tracker.client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` != ''")}
    return results, runs, tracker, exp, children


def test_headline_names_say_the_split_and_branch_and_drop_the_ambiguous_aliases():
    result = {"split": "val", "metrics": {"top1": 76.0, "video_top1": 70.0, "fused_top1": 76.0, "mAP": 50.0},
              "splits": {"val": {"top1": 76.0, "video_top1": 70.0, "fused_top1": 76.0, "mAP": 50.0},
                         "tune": {"video_top1": 69.0, "x": None}}, "counts": {"evaluated": 3}}
    assert headline_metrics(result) == {"val/video_top1": 70.0, "val/fused_top1": 76.0, "val/mAP": 50.0,
                                        "tune/video_top1": 69.0}


def test_children_are_named_ordered_and_described_as_the_table(store):
    results, runs, tracker, exp, children = store
    assert exp.tags.get("mlflow.note.content") == f"{SPEC}: A small Table 6 for the MLflow tests"
    by_variant = {v: children[rd.run_id] for v, rd in runs.items()}
    assert {v: r.info.run_name for v, r in by_variant.items()} == {v: f"{SPEC}.{v}" for v in VARIANTS}
    assert [by_variant[v].data.tags[TAG_ORDER] for v in VARIANTS] == ["000", "001", "002"]
    vcs = by_variant["vcs"].data.tags
    assert vcs[TAG_CELLS] == "6a/vcs/top1, 6b/word_cls/top1" and vcs[TAG_TABLES] == "6a,6b"
    assert vcs[TAG_NOTE].startswith(f"**{SPEC}.vcs**: + Video Concept Spotting") and "`6b/word_cls/top1`" in vcs[TAG_NOTE]


def test_headline_metrics_once_at_step_0_in_percent_and_curves_at_their_steps(store):
    results, runs, tracker, exp, children = store
    run = children[runs["bike"].run_id]
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("val/")} == {
        "val/video_top1": 74.25, "val/attr_top1": 40.5, "val/fused_top1": 76.75}
    assert not any(k.startswith(("counts", "final/", "metrics.", "splits.")) or k == "top1" for k in run.data.metrics)
    history = tracker.client.get_metric_history(run.info.run_id, "val/fused_top1")
    assert [(m.step, m.value) for m in history] == [(0, 76.75)]
    assert [m.step for m in tracker.client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]


def test_times_are_the_jobs_pictures_and_init_from_are_logged(store):
    results, runs, tracker, exp, children = store
    rd = runs["bike"]
    run = children[rd.run_id]
    start, end = job_times(rd)
    assert (run.info.start_time, run.info.end_time) == (start, end) and run.info.status == "FINISHED"
    arts = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "figures")}
    assert arts == {"figures/confusion.png", "figures/confusion.json"}
    source = children[runs["vcs"].run_id]
    assert run.data.tags[TAG_INIT_FROM_RUN] == source.info.run_id
    assert f"(#/experiments/{exp.experiment_id}/runs/{source.info.run_id})" in run.data.tags[TAG_NOTE]


def test_the_parent_run_is_the_table(store):
    results, runs, tracker, exp, children = store
    parents = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_PARENT_KEY}` = '{SPEC}:smoke'")
    assert len(parents) == 1
    parent = parents[0]
    assert {r.data.tags[TAG_PARENT_RUN] for r in children.values()} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["6a/vcs/top1"] == 74.25 and parent.data.metrics["6e/trained/V_A"] == 76.75  # MLflow names have no "+"
    from harness.registry import load_registry

    paper = load_registry().entry("6a/vcs/top1").value
    assert parent.data.metrics["6a/vcs/top1/delta"] == pytest.approx(74.25 - paper)
    assert parent.data.params["profile"] == "official" and parent.data.params["scale"] == "smoke"
    assert "table6.md" in {a.path for a in tracker.client.list_artifacts(parent.info.run_id)}


def test_a_child_run_is_created_when_its_job_starts(tmp_path):
    results = tmp_path / "results"
    spec_path = write_spec(tmp_path / "spec.yaml")
    rd = make_run(results, spec_path, "vcs", 4)
    uri = default_tracking_uri(results)
    report = sync(results, uri)
    assert report.not_started == [rd.run_id] and report.created == []
    rd.write_state("running", job_id="5")
    assert sync(results, uri).created == [rd.run_id]
    tracker = Tracker(results, uri)
    exp = tracker.client.get_experiment_by_name(SPEC)
    [run] = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` = '{rd.run_id}'")
    assert run.info.status == "RUNNING" and run.info.start_time == job_times(rd)[0]
    run_job(rd, VARIANTS["vcs"][2], figure=False)
    assert sync(results, uri).updated == [rd.run_id]
    assert sync(results, uri).updated == []  # idempotent


def test_a_moved_store_warns_then_rebase_points_it_at_the_new_place(tmp_path):
    old = tmp_path / "old" / "results"
    runs = build_store(old)
    new = tmp_path / "new" / "results"
    shutil.move(str(old), str(new))
    shutil.rmtree(tmp_path / "old")
    uri = default_tracking_uri(new)
    report = sync(new, uri)
    assert report.warnings and "bikebench sync --rebase" in report.warnings[0]
    assert any(SPEC in line for line in rebase_store(new, uri))
    assert sync(new, uri).warnings == []
    tracker = Tracker(new, uri)
    exp = tracker.client.get_experiment_by_name(SPEC)
    [run] = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` = '{runs['vcs'].run_id}'")
    assert run.info.artifact_uri.startswith((new / "mlartifacts").as_uri())
    assert {a.path for a in tracker.client.list_artifacts(run.info.run_id, "figures")} == {
        "figures/confusion.png", "figures/confusion.json"}


def test_the_deep_link_opens_the_runs_view_in_table_order():
    link = runs_view_link("http://127.0.0.1:5000/", "7")
    assert link.startswith("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert "orderByKey=tags.%60bikebench.order%60" in link
