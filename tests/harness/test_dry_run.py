"""`--dry-run --json` / `--show-config`: every planned run, with its complete resolved config."""

from __future__ import annotations

import json

import yaml

from bike.config import RunConfig
from harness.cli import main


def _records(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_table6_full_scale_plan_as_json_is_the_papers_setting(tmp_path, capsys):
    recs = _records(capsys, ["table6", "--scale", "full", "--executor", "slurm", "--dry-run", "--json",
                             "--results", str(tmp_path)])
    assert len(recs) == len({r["run_id"] for r in recs}) >= 15
    ids = {r["run_id"] for r in recs}
    for r in recs:
        assert {"run_id", "spec", "variant", "kind", "dependencies", "cells", "config"} <= set(r)
        assert r["kind"] in ("train", "evaluate") and set(r["dependencies"]) <= ids
        c = r["config"]
        # the paper and the released code train on the whole list: nothing held out
        assert c["data"]["tuning_holdout"] == 0.0
        # appendix A.2: attributes generated with CLIP ViT-L/14, encoded by the text tower of ViT-B/32
        assert c["attributes"]["generator_backbone"] == "ViT-L-14" and c["attributes"]["text_encoder"] == "ViT-B-32"
        # the official profile: the released code's λ = 0.7; values that depend on others are resolved
        assert c["fusion"]["lam"] == 0.7 and c["train"]["short_side"] == 256
        assert c["attributes"]["lexicon"].endswith((".txt",)) and c["attributes"]["generator_pretrained"] == "openai"
        plain = {k: v for k, v in c["attributes"].items() if k != "text_encoder_shared"}
        resolved = RunConfig.model_validate({**c, "attributes": plain})  # a complete, valid run config
        assert resolved.fusion_lambda == 0.7 and resolved.short_side == 256
    cells = {(x["table"], x["row"], x["column"]) for r in recs for x in r["cells"]}
    assert ("6a", "mean_pool", "top1") in cells and ("6e", "trained", "V+A") in cells
    assert any(r["dependencies"] for r in recs)  # stage 2 and evaluations wait for their stage-1 run


def test_paper_profile_resolves_the_papers_lambda(tmp_path, capsys):
    recs = _records(capsys, ["table6", "--scale", "full", "--dry-run", "--json", "--results", str(tmp_path), "profile=paper"])
    # appendix A.1: "we set λ to 0.6 for the Video branch with ViT-B and λ to 0.8 for the Video branch with ViT-L"
    lam = {r["config"]["model"]["backbone"]: r["config"]["fusion"]["lam"] for r in recs}
    assert lam["ViT-B-32"] == 0.6 and all(v == (0.8 if "L-14" in k else 0.6) for k, v in lam.items())


def test_show_config_prints_the_same_records_as_yaml(tmp_path, capsys):
    recs = _records(capsys, ["table6", "--scale", "full", "--dry-run", "--json", "--results", str(tmp_path)])
    assert main(["table6", "--scale", "full", "--dry-run", "--show-config", "--results", str(tmp_path)]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert docs == recs


def test_json_without_dry_run_is_refused(tmp_path, capsys):
    assert main(["table6", "--scale", "full", "--json", "--results", str(tmp_path)]) == 2
    assert "--json needs --dry-run" in capsys.readouterr().err


def test_every_shipped_spec_expands_at_full_scale_into_published_cells(tmp_path, capsys):
    """Each spec under experiments/ plans at --scale full without error; every cell it fills is a
    registry entry, and the official-profile runs train with the released precision (fp16 AMP)."""
    from pathlib import Path

    from harness.registry import load_registry

    registry_keys = {e.key for e in load_registry()}
    specs = sorted(Path("experiments").glob("*.yaml"))
    assert len(specs) >= 7
    for spec in specs:
        recs = _records(capsys, ["run", str(spec), "--scale", "full", "--dry-run", "--json", "--results", str(tmp_path)])
        assert recs, f"{spec}: no run planned"
        for r in recs:
            for x in r["cells"]:
                assert f"{x['table']}/{x['row']}/{x['column']}" in registry_keys, (spec, x)
            c = r["config"]
            assert c["data"]["tuning_holdout"] == 0.0, spec
            if c["profile"] == "official":
                assert c["train"]["precision"] == "fp16" and c["fusion"]["lam"] == 0.7, spec


def test_map_cells_compare_numbers_of_the_same_kind(tmp_path, capsys):
    """Charades' published numbers are the released test's running mAP; ActivityNet's a true mAP. A
    spec cell must fill each from the result metric of that kind (test_charades.py vs the final mAP)."""
    from pathlib import Path

    from harness.registry import RESULT_METRIC_OF_KIND, load_registry

    kinds = {e.key: e.metric for e in load_registry()}
    assert kinds["3/bike_vitl14/mAP"] == "mAP_running" and kinds["2/bike_vitl14/mAP"] == "mAP"
    from harness.spec import load_spec

    checked = 0
    for path in sorted(Path("experiments").glob("*.yaml")):
        spec = load_spec(path)  # every cell of every variant, whether or not it runs here
        for c in (c for v in spec.variants.values() for c in v.cells):
            kind = kinds[f"{c.table}/{c.row}/{c.column}"]
            if kind in RESULT_METRIC_OF_KIND:
                assert c.metric == RESULT_METRIC_OF_KIND[kind], (path, c)
                checked += 1
    assert checked >= 3  # Table 3, the zoo's Charades row, ActivityNet's mAP cells
