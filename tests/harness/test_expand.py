"""Expansion: run identity, sharing, dependencies, waves, cells, code version, Table 6 coverage."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from harness.expand import code_version, expand, prepare_run_dirs, resolve_source_run
from harness.rundir import RunDir
from harness.spec import SpecError, load_spec
from harness.registry import load_registry
from tests.harness.worldstub import fake_world

REPO = Path(__file__).resolve().parents[2]


def write_spec(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def cell(table, row, column, metric="video_top1"):
    return {"table": table, "row": row, "column": column, "metric": metric}


def base(name="demo", **variants):
    return {"name": name, "family": "general",
            "dataset": {"name": "k400", "root": "/d", "val_list": "/d/val.txt", "class_file": "/d/c.csv"},
            "model": {"backbone": "ViT-B-32"}, "variants": variants}


def test_identical_variants_share_one_run_and_its_cells(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.yaml", base(
        a={"set": {"model.interaction": "mean"}, "cells": [cell("6a", "mean_pool", "top1")]},
        b={"set": {"model.interaction": "mean"}, "cells": [cell("6i", "vit_b32", "baseline")]},
        c={"set": {"model.interaction": "vcs"}, "cells": [cell("6a", "vcs", "top1")]},
    )))
    plan = expand(spec, "full", tmp_path / "results")
    assert len(plan.runs) == 2
    shared = plan.runs[0]
    assert shared.requested_by == (("demo", "a"), ("demo", "b"))
    assert {(c.table, c.row) for c in shared.cells} == {("6a", "mean_pool"), ("6i", "vit_b32")}
    assert shared.run_id == shared.config.content_hash()
    assert shared.run_dir == (tmp_path / "results" / "runs" / shared.run_id).resolve()


def test_init_from_variant_becomes_a_dependency_on_its_run_dir(tmp_path):
    body = base(
        video={"set": {"attributes.enabled": False}},
        bike={"stage": "attributes", "init_from": {"variant": "video"}, "set": {"attributes.train": True}},
        views={"stage": "eval", "init_from": {"variant": "bike"}, "set": {"eval.clips": 4}},
    )
    spec = load_spec(write_spec(tmp_path / "s.yaml", body))
    plan = expand(spec, "full", tmp_path / "r")
    ids = {run.requested_by[0][1]: run for run in plan.runs}
    assert [r.requested_by[0][1] for r in plan.runs] == ["video", "bike", "views"]  # topological
    assert ids["bike"].dependencies == (ids["video"].run_id,)
    assert ids["bike"].config.init_from == str(ids["video"].run_dir)
    assert ids["bike"].kind == "train" and ids["views"].kind == "evaluate"
    assert [[r.requested_by[0][1] for r in w] for w in plan.waves()] == [["video"], ["bike"], ["views"]]
    # changing the dependency changes every dependant's identity
    body["variants"]["video"]["set"]["model.frames"] = 16
    plan2 = expand(load_spec(write_spec(tmp_path / "s.yaml", body)), "full", tmp_path / "r")
    ids2 = {run.requested_by[0][1]: run.run_id for run in plan2.runs}
    assert all(ids2[v] != ids[v].run_id for v in ("video", "bike", "views"))


def test_init_from_another_spec_and_a_checkpoint_path(tmp_path):
    (tmp_path / "experiments").mkdir()
    write_spec(tmp_path / "experiments" / "k400.yaml", base("k400", video={}))
    zs = base("zs", eval={"init_from": {"spec": "experiments/k400.yaml", "variant": "video"}},
              ckpt={"init_from": str(tmp_path / "weights.pt")})
    zs["family"] = "zero-shot-full"
    spec = load_spec(write_spec(tmp_path / "experiments" / "zs.yaml", zs))
    plan = expand(spec, "full", tmp_path / "r")
    by = {r.requested_by[0]: r for r in plan.runs}
    k400_run = by[("k400", "video")]
    assert by[("zs", "eval")].dependencies == (k400_run.run_id,)
    assert by[("zs", "eval")].config.stage == "eval"
    assert by[("zs", "ckpt")].config.init_from == str(tmp_path / "weights.pt")
    assert by[("zs", "ckpt")].dependencies == ()
    bad = base("zs2", eval={"init_from": {"spec": "experiments/k400.yaml", "variant": "nope"}})
    with pytest.raises(SpecError, match="variant: got 'nope'"):
        expand(load_spec(write_spec(tmp_path / "experiments" / "zs2.yaml", bad)), "full", tmp_path / "r")


def test_dependency_cycles_are_errors(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.yaml", base(
        a={"init_from": {"variant": "b"}}, b={"init_from": {"variant": "a"}})))
    with pytest.raises(SpecError, match="cycle"):
        expand(spec, "full", tmp_path / "r")


def test_variants_not_run_at_a_scale_report_their_cells(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.yaml", {
        **base(
            small={"cells": [cell("6i", "vit_b32", "V")]},
            large={"set": {"model.backbone": "ViT-L-14"}, "run_at": ["full"], "not_run_note": "no L/14 at smoke",
                   "cells": [cell("6i", "vit_l14", "V")]},
            large_eval={"stage": "eval", "init_from": {"variant": "large"}, "cells": [cell("6i", "vit_l14", "V*")]},
        ),
        "paper_only": [{"table": "6h", "row": "actionclip", "column": "top1"}],
    }))
    smoke = expand(spec, "smoke", tmp_path / "r", world=fake_world(tmp_path))
    assert [r.requested_by for r in smoke.runs] == [(("demo", "small"),)]
    reasons = {(c.row, c.column): c.reason for c in smoke.not_run}
    assert reasons[("vit_l14", "V")] == "no L/14 at smoke"
    assert "depends on demo.large" in reasons[("vit_l14", "V*")]
    assert ("actionclip", "top1") in reasons
    assert len(expand(spec, "full", tmp_path / "r").runs) == 3


def test_code_version_goes_to_meta_not_to_the_hash(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.yaml", base(a={})))
    plan = expand(spec, "full", tmp_path / "r")
    prepare_run_dirs(plan)
    rd = RunDir(plan.runs[0].run_dir)
    meta = rd.read_meta()
    assert meta["code"] == code_version()
    assert set(meta["code"]) == {"commit", "dirty"}
    assert meta["code"]["commit"] is None or len(meta["code"]["commit"]) == 40
    assert "commit" not in rd.config_path.read_text()
    assert meta["requested_by"] == [{"spec": "demo", "variant": "a", "scale": "full"}]


def test_table6_plan_shares_runs_and_covers_the_registry(tmp_path):
    spec = load_spec(REPO / "experiments" / "table6.yaml")
    smoke = expand(spec, "smoke", tmp_path / "r", world=fake_world(tmp_path))
    full = expand(spec, "full", tmp_path / "r")
    cell_run = {(c.table, c.row, c.column): rid for c, rid in full.cells()}
    # "Ours" (stage 2) fills 6e trained, 6f ours, 6g k400, 6h bike and 6i vit_b32 V+A: one run
    ours = {cell_run[k] for k in [("6e", "trained", "V+A"), ("6f", "ours", "V+A"), ("6g", "k400", "V+A"),
                                  ("6h", "bike", "top1"), ("6i", "vit_b32", "V+A")]}
    assert len(ours) == 1
    assert cell_run[("6c", "prompt_both", "top1")] == cell_run[("6d", "k5", "A")] == cell_run[("6e", "untrained", "A")]
    assert cell_run[("6a", "vcs", "top1")] == cell_run[("6b", "word_cls", "top1")]
    assert len({(c.table, c.row, c.column) for c, _ in smoke.cells()}) + len(
        [c for c in smoke.not_run if c.table.startswith("6")]) == len(cell_run) + 2  # + 2 paper-only cells
    assert len(smoke.runs) < len(full.runs)
    registry = load_registry()
    wanted = {(e.table, e.row, e.column) for e in registry.find() if e.table.startswith("6")
              and e.delta_of is None and e.profile != "external"}
    assert wanted - set(cell_run) == set()


def test_resolve_source_run_for_tuning(tmp_path):
    path = write_spec(tmp_path / "s.yaml", base(a={}, b={"set": {"model.frames": 4}}))
    ref = SimpleNamespace(spec=str(path), variant="b", scale="full")
    run_dir = resolve_source_run(ref, results=tmp_path / "r")
    plan = expand(load_spec(path), "full", tmp_path / "r")
    assert run_dir == [r.run_dir for r in plan.runs if r.requested_by == (("demo", "b"),)][0]
