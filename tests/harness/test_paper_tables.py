"""Every table of the paper from specs (harness.paper_tables): coverage of the published numbers, shared
runs, `bikebench table ID` / `bikebench paper` with the stand-in engine, and the full-scale cost."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from harness import check
from harness.cli import main
from harness.expand import expand
from harness.paper_tables import (PAPER_TABLES, TABLE_IDS, coverage, paper_table, plan_cost, run_paper, run_table,
                                  table_specs)
from harness.spec import load_spec
from harness.table6 import TABLE6_SPEC
from harness.tracking import TAG_PARENT_KEY, TAG_RUN_ID, Tracker, default_tracking_uri
from tests.harness.test_table6 import stand_in_engine
from tests.harness.worldstub import fake_world


def test_every_published_bike_accuracy_is_a_cell_or_paper_only_with_a_reason():
    cov = coverage()
    assert cov["uncovered"] == []
    assert len(cov["cells"]) + len(cov["paper_only"]) == cov["total"] == 119
    assert all(reason.strip() for reason in cov["paper_only"].values())
    # the tables named in the issue
    assert cov["cells"]["1/bike_vitl14_32x336/top5"] == "table1.vitl14_32x336"
    assert cov["cells"]["2/bike_vitl14/mAP"] == "anet.vitl14_336_f16"
    assert cov["cells"]["A3/bike_vitl14_336/hmdb51"] == "finetune_ucf_hmdb.hmdb51_336"
    assert cov["cells"]["readme_zero_shot/k600/split3"] == "zero_shot_half.k600"


@pytest.mark.parametrize("scale", ["smoke", "full"])
def test_the_text_and_log_numbers_share_table6_runs(tmp_path, scale):
    world = fake_world(tmp_path) if scale == "smoke" else None
    ours = expand(load_spec("experiments/k400_vitb.yaml"), scale, tmp_path, world=world)
    table6 = {v: r.run_id for r in expand(load_spec(TABLE6_SPEC), scale, tmp_path, world=world).runs for _, v in r.requested_by}
    assert ours.runs and all(table6[v] == r.run_id for r in ours.runs for _, v in r.requested_by)


def test_tables_share_the_k400_vitl14_runs_and_keep_only_what_they_need(tmp_path):
    tables = [paper_table(t) for t in ("1", "3", "A3", "5")]
    plan = expand(table_specs(tables), "full", tmp_path)
    trained = [r for r in plan.runs if any(s == "k400_vitl14" for s, _ in r.requested_by)]
    assert sorted(v for r in trained for _, v in r.requested_by) == [
        "video", "video_336_f16", "video_336_f32", "video_336_f8", "video_f16"]  # each once; `bike` not needed
    assert len({r.run_id for r in plan.runs}) == len(plan.runs)


def test_unknown_table_is_refused_naming_the_choices(capsys):
    assert main(["table", "7", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "table '7'" in err and "1, 2, 3, 4, 5, 6, A3, text, zoo" in err and "Traceback" not in err
    assert paper_table("a3").id == "A3" and TABLE_IDS[:6] == ("1", "2", "3", "4", "5", "6")


def test_full_scale_dry_run_prints_the_plan_and_its_gpu_hours(tmp_path, capsys):
    assert main(["paper", "--scale", "full", "--executor", "slurm", "--dry-run", "--results", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "wave 0:" in text and "GPU-hours" in text and "table A3" in text and "total" in text
    assert not (tmp_path / "runs").exists()  # nothing was prepared or submitted
    plan = expand(table_specs(PAPER_TABLES), "full", tmp_path)
    cost = plan_cost(plan, PAPER_TABLES)
    f16 = next(r for r in cost["runs"] if "k400_vitl14.video_f16" in r["label"])
    assert f16["gpus"] == 8 and f16["minutes"] == 4320 and f16["gpu_hours"] == 576.0
    assert cost["total"]["runs"] == len(plan.runs)
    assert cost["total"]["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in cost["runs"]), abs=0.1)
    assert cost["total"]["gpu_hours"] < sum(t["gpu_hours"] for t in cost["tables"].values())  # shared runs once
    assert f"{cost['total']['gpu_hours']:.1f} GPU-hours" in text


def test_table1_smoke_end_to_end(tmp_path):
    results = tmp_path / "results"
    uri = default_tracking_uri(results)
    calls: list[str] = []
    engine = stand_in_engine(calls)
    out = io.StringIO()
    drive = run_table("1", scale="smoke", cluster="debug", results=results, tracking_uri=uri, world=fake_world(tmp_path),
                      job_targets={"train": engine, "evaluate": engine}, out=out)
    assert drive.ok and len(calls) == 2  # the 16-frame K400 stand-in, then its 4x3 evaluation
    doc = json.loads((results / "table1_results.json").read_text())
    assert doc["scale"] == "smoke" and [(c["row"], c["column"]) for c in doc["cells"]] == [("bike_vitl14_16x224", "top1")]
    missing = {(m["row"], m["column"]): m["reason"] for m in json.loads((results / "table1_missing.json").read_text())}
    assert "no weights for a second (336-px) backbone" in missing[("bike_vitl14_8x336", "top1")]
    assert missing[("bike_vitl14_16x224", "gflops")] == "a FLOPs count, not measured by a run"
    md = (results / "table1.md").read_text()
    assert md in out.getvalue() and "16 frames" in md and "88.1" in md and f"{doc['cells'][0]['value']:.1f}" in md
    assert "\\begin{tabular}" in (results / "table1.tex").read_text()
    assert 'data-table="1"' in (results / "table1.html").read_text()
    assert len(check.load_results(results / "table1_results.json")) == 1

    tracker = Tracker(results, uri)
    exp = tracker.client.get_experiment_by_name("table1")
    parents = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_PARENT_KEY}` = 'table1:smoke'")
    assert len(parents) == 1 and parents[0].data.metrics["cells_ours"] == 1
    assert {a.path for a in tracker.client.list_artifacts(parents[0].info.run_id)} >= {"table1.md", "table1_results.json", "table1.html"}
    children = tracker.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` != ''")
    assert sorted(r.data.tags[TAG_RUN_ID] for r in children) == sorted(drive.plan.by_id)


def every_metric_engine(calls: list):
    """The Table 6 stand-in engine, also writing the metrics of the other protocols (mAP, zero-shot)."""
    base = stand_in_engine(calls)

    def run(config, run_dir):
        result = base(config, run_dir)
        run_dir = Path(run_dir)
        result["metrics"].update({"video_top5": 90.0, "mAP": 50.0, "mAP_official_running": 49.0, "zs_full_top1": 60.0,
                                  "zs_half_mean": 70.0, "zs_half_std": 2.5})
        (run_dir / "result.json").write_text(json.dumps(result))
        return result

    return run


def test_paper_smoke_writes_every_table_in_order(tmp_path):
    results = tmp_path / "results"
    calls: list[str] = []
    engine = every_metric_engine(calls)
    drive = run_paper(scale="smoke", cluster="debug", results=results, world=fake_world(tmp_path), track=False,
                      job_targets={"train": engine, "evaluate": engine}, out=io.StringIO())
    assert drive.ok and len(calls) == len(drive.plan.runs) == len(set(calls))
    md = (results / "paper.md").read_text()
    positions = [md.index(f"# {t.title} — ours (smoke scale)") for t in PAPER_TABLES]
    assert positions == sorted(positions)
    assert "Published BIKE accuracies: 119;" in md and "within ±0.5 points of the paper" in md
    page = (results / "paper.html").read_text()
    assert all(f'id="table-{t.id}"' in page for t in PAPER_TABLES)
    cells = check.load_results(results / "paper_results.json")
    assert {c.table for c in cells} >= {"1", "2", "3", "4", "5", "6a", "A3", "text", "readme_zero_shot", "logs_k400"}
    for t in PAPER_TABLES:  # each table's own results file too
        assert (results / f"table{t.id}_results.json").is_file() and (results / f"table{t.id}.md").is_file()
    assert "directions" in json.loads((results / "table6_results.json").read_text())
    half = next(c for c in cells if c.paper_key == "5/bike_vitl14/ucf101_half")
    assert half.std == 2.5 and "70.0 ± 2.5" in md  # half-class cells: mean ± std over the splits


REPO = Path(__file__).resolve().parents[2]


def test_the_committed_paper_baseline_covers_every_smoke_cell_of_every_table():
    """`make check` compares `make paper`'s results with results/baselines/paper_smoke.json: it must hold
    every cell a shipped spec fills at smoke scale, each with a tolerance measured over training seeds,
    blessed on the same world as the Table 6 baseline."""
    from harness.paper_tables import EXPERIMENTS

    doc = json.loads((REPO / "results/baselines/paper_smoke.json").read_text())
    expected = set()
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        spec = load_spec(path)
        for variant in spec.variants.values():
            if "smoke" in variant.run_at:
                expected.update(f"{c.table}/{c.row}/{c.column}" for c in variant.cells)
    assert len(expected) > 60
    assert sorted(expected - set(doc["cells"])) == []
    assert all(cell.get("seeds") == 3 and cell["tol"] >= 0 for cell in doc["cells"].values())
    table6 = json.loads((REPO / "results/baselines/table6_smoke.json").read_text())
    assert doc["meta"]["world"] == table6["meta"]["world"]
    for key, cell in table6["cells"].items():  # the Table 6 cells are the same runs in both baselines
        assert doc["cells"][key]["value"] == cell["value"], key
