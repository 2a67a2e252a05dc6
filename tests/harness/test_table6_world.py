"""`bikebench table6` end to end on the test-size world: real engine, real submitit, real MLflow,
compared with the committed baseline (results/baselines/table6_smoke_testworld.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.check import check_main
from harness.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "results" / "baselines" / "table6_smoke_testworld.json"


@pytest.fixture(scope="module")
def table6_run(test_world, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    rc = cli_main(["table6", "--scale", "smoke", "--executor", "local", "--parallelism", "2",
                   "--world-root", str(test_world.root), "--world-size", "test", "--results", str(results)])
    return rc, results


@pytest.mark.slow
def test_table6_smoke_fills_every_runnable_cell_and_logs_mlflow(table6_run):
    rc, results = table6_run
    assert rc == 0
    cells = json.loads((results / "table6_results.json").read_text())
    cells = cells["cells"] if isinstance(cells, dict) else cells
    keys = {(c["table"], c["row"], c["column"]) for c in cells}
    for sub in "abcdefg":
        assert any(k[0] == f"6{sub}" for k in keys), f"no 6{sub} cell"
    assert ("6a", "mean_pool", "top1") in keys and ("6e", "trained", "V+A") in keys
    assert all(0.0 <= c["value"] <= 100.0 for c in cells)
    md = (results / "table6.md").read_text()
    assert "6a" in md and "78.5" in md  # the paper's VCS number printed beside ours

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    run_ids = [r.data.tags.get("bikebench.run_id") for r in runs if r.data.tags.get("bikebench.run_id")]
    assert len(run_ids) == len(set(run_ids)) >= 10  # one child run per distinct run, never duplicated


@pytest.mark.slow
def test_table6_smoke_matches_committed_baseline_and_a_perturbation_fails(table6_run, tmp_path):
    rc, results = table6_run
    assert rc == 0
    produced = results / "table6_results.json"
    assert check_main(str(produced), str(BASELINE), against="baseline") == 0

    data = json.loads(produced.read_text())
    cells = data["cells"] if isinstance(data, dict) else data
    target = next(c for c in cells if (c["table"], c["row"], c["column"]) == ("6a", "vcs", "top1"))
    target["value"] -= 5.0  # a change that moves a number: the check must fail
    perturbed = tmp_path / "perturbed.json"
    perturbed.write_text(json.dumps(data))
    assert check_main(str(perturbed), str(BASELINE), against="baseline") == 1


@pytest.mark.slow
def test_rerunning_table6_skips_every_finished_run(table6_run, test_world):
    rc, results = table6_run
    before = {p.name: (p / "result.json").stat().st_mtime for p in (results / "runs").iterdir()}
    assert cli_main(["table6", "--scale", "smoke", "--executor", "local", "--results", str(results),
                     "--world-root", str(test_world.root), "--world-size", "test"]) == 0
    after = {p.name: (p / "result.json").stat().st_mtime for p in (results / "runs").iterdir()}
    assert before == after  # nothing re-ran
