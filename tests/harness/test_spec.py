"""Specs: loading, env expansion, validation messages, layering, resolution to RunConfig."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.spec import (
    SpecError,
    WorldSplit,
    expand_env,
    load_spec,
    parse_overrides,
    resolve_config,
    spec_from_dict,
)

REPO = Path(__file__).resolve().parents[2]


def fake_world(tmp: Path):
    def provider(split: str) -> WorldSplit:
        root = tmp / "world" / split
        return WorldSplit(
            data={"dataset": f"world_{split}", "root": str(root), "train_list": str(root / "train.txt"),
                  "val_list": str(root / "val.txt"), "class_file": str(root / "classes.csv")},
            values={"checkpoint": str(tmp / "world" / "clip.pt"), "generator": None, "model": "bike-tiny", "frames": 8, "resolution": 64, "root": str(tmp / "world")},
        )

    return provider


def write_spec(tmp_path: Path, body: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


BASE = {
    "name": "demo",
    "family": "general",
    "dataset": {"name": "k400", "root": "/data/k400", "val_list": "/data/k400/val.txt", "class_file": "/data/k400/c.csv"},
    "model": {"backbone": "ViT-B-32", "frames": 8},
    "variants": {"base": {"cells": [{"table": "6a", "row": "vcs", "column": "top1", "metric": "video_top1"}]}},
}


def test_table6_spec_resolves_at_both_scales(tmp_path):
    spec = load_spec(REPO / "experiments" / "table6.yaml")
    assert spec.family == "general"
    cfg = resolve_config(spec, "mean_pool", "full")
    assert (cfg.model.backbone, cfg.model.frames, cfg.model.resolution) == ("ViT-B-32", 8, 224)
    assert (cfg.model.interaction, cfg.model.temporal, cfg.attributes.enabled) == ("mean", "none", False)
    smoke = resolve_config(spec, "mean_pool", "smoke", world=fake_world(tmp_path))
    assert smoke.model.backbone == "bike-tiny"
    assert smoke.model.pretrained == str(tmp_path / "world" / "clip.pt")
    assert (smoke.model.frames, smoke.model.resolution) == (8, 64)  # typed, not "8"
    assert smoke.data.dataset == "world_general" and smoke.data.root.endswith("general")
    assert smoke.train.max_steps is not None and smoke.train.batch_size < cfg.train.batch_size
    in1k = resolve_config(spec, "bike_in1k", "smoke", world=fake_world(tmp_path))
    assert in1k.attributes.lexicon == "world_objects"  # the variant's smoke override beats its `set`
    assert resolve_config(spec, "bike_in1k", "full").attributes.lexicon == "imagenet1k"


def test_env_expansion_with_defaults_and_errors(tmp_path):
    env = {"BIKE_DATA": "/mnt/d"}
    out = expand_env({"a": "${BIKE_DATA}/k400", "b": ["${NOPE:-fallback}/x"], "c": "${world.frames}"}, "f.yaml", env=env)
    assert out == {"a": "/mnt/d/k400", "b": ["fallback/x"], "c": "${world.frames}"}
    with pytest.raises(SpecError) as err:
        expand_env({"dataset": {"root": "${MISSING_VAR}/k"}}, "f.yaml", env=env)
    msg = str(err.value)
    assert "f.yaml" in msg and "dataset.root" in msg and "MISSING_VAR" in msg


def test_load_spec_expands_environment(tmp_path, monkeypatch):
    body = {**BASE, "dataset": {**BASE["dataset"], "root": "${BIKE_TEST_ROOT:-/default}/videos"}}
    path = write_spec(tmp_path, body)
    assert resolve_config(load_spec(path), "base", "full").data.root == "/default/videos"
    monkeypatch.setenv("BIKE_TEST_ROOT", "/elsewhere")
    assert resolve_config(load_spec(path), "base", "full").data.root == "/elsewhere/videos"


def test_unknown_top_level_key_names_file_and_allowed(tmp_path):
    path = write_spec(tmp_path, {**BASE, "varients": {}})
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert str(path) in msg and "varients" in msg and "unknown field" in msg and "variants" in msg


def test_bad_values_name_file_dotted_path_value_and_allowed(tmp_path):
    body = {**BASE, "model": {"backbone": "ViT-B-32", "interaction": "meen", "colour": 1},
            "variants": {"base": {"set": {"model.temporal": "lstm", "train.epochz": 3}},
                         "eval": {"init_from": {"variant": "nope"}}}}
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert msg.startswith(str(path))
    assert "model.interaction: got 'meen'; expected one of 'mean' or 'vcs'" in msg
    assert "model.colour" in msg and "backbone" in msg  # unknown field lists allowed ones
    assert "variants.base.set.model.temporal: got 'lstm'" in msg and "'transformer'" in msg
    assert "variants.base.set.train.epochz" in msg and "epochs" in msg
    assert "variants.eval.init_from.variant: got 'nope'" in msg and "base" in msg


def test_missing_required_field(tmp_path):
    body = {k: v for k, v in BASE.items() if k != "family"}
    with pytest.raises(SpecError, match=r"family: missing"):
        load_spec(write_spec(tmp_path, body))


def test_command_line_overrides_are_yaml_typed_and_validated(tmp_path):
    assert parse_overrides(["train.epochs=3", "model.pretrained=null", "eval.k600_split_files=[a, b]", "model.prompt=a {} b"]) == {
        "train.epochs": 3, "model.pretrained": None, "eval.k600_split_files": ["a", "b"], "model.prompt": "a {} b"}
    with pytest.raises(SpecError, match="key=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(SpecError, match="unknown field 'epoch' of train"):
        parse_overrides(["train.epoch=3"])
    path = write_spec(tmp_path, BASE)
    spec = load_spec(path, ["train.epochs=3", "model.frames=16"])
    cfg = resolve_config(spec, "base", "full")
    assert (cfg.train.epochs, cfg.model.frames) == (3, 16)
    with pytest.raises(SpecError) as err:
        load_spec(path, ["model.frames=0"])
    assert "command line" in str(err.value) and "model.frames: got 0" in str(err.value)


def test_layer_order_and_provenance_in_errors(tmp_path):
    body = {**BASE, "scales": {"full": {"model.frames": 16}},
            "variants": {"v": {"set": {"model.frames": 4}, "scales": {"full": {"model.frames": 32}}},
                         "w": {"set": {"model.frames": 4}}}}
    spec = load_spec(write_spec(tmp_path, body))
    assert resolve_config(spec, "v", "full").model.frames == 32
    assert resolve_config(spec, "w", "full").model.frames == 4
    spec_cli = load_spec(write_spec(tmp_path, body), ["model.frames=2"])
    assert resolve_config(spec_cli, "v", "full").model.frames == 2
    # cross-field errors surface at resolution with the layer that set the value
    bad = {**BASE, "variants": {"v": {"set": {"attributes.num_attributes": 12}}}}
    with pytest.raises(SpecError) as err:
        resolve_config(load_spec(write_spec(tmp_path, bad, "bad.yaml")), "v", "full")
    assert "bad.yaml" in str(err.value) and "variant 'v'" in str(err.value) and "num_attributes=12" in str(err.value)


def test_world_layer_replaces_dataset_paths_but_not_later_fields(tmp_path):
    body = {**BASE, "dataset": {**BASE["dataset"], "num_workers": 7, "format": "frame_dir", "skip_bad_eval": False},
            "scales": {"smoke": {"dataset.skip_bad_eval": True}},
            "variants": {"base": {"set": {"dataset.num_workers": 1}}}}
    spec = load_spec(write_spec(tmp_path, body))
    cfg = resolve_config(spec, "base", "smoke", world=fake_world(tmp_path))
    assert cfg.data.root == str(tmp_path / "world" / "general")  # world beats the spec's K400 paths
    assert cfg.data.num_workers == 1 and cfg.data.skip_bad_eval is True  # later layers beat the world
    assert cfg.data.format == "video_list"  # the paper dataset's fields do not leak into the world's
    ml = resolve_config(spec_from_dict({**body, "family": "multi-label"}, "ml.yaml"), "base", "smoke", world=fake_world(tmp_path))
    assert ml.data.multi_label and ml.data.root == cfg.data.root.replace("general", "multi_label")
    with pytest.raises(SpecError, match="world build"):
        resolve_config(spec, "base", "smoke", world=None)


def test_family_defaults(tmp_path):
    zs = {**BASE, "family": "zero-shot-half"}
    cfg = resolve_config(spec_from_dict(zs, "zs.yaml"), "base", "full")
    assert (cfg.eval.protocol, cfg.stage) == ("zero_shot_half", "eval")
    ml = resolve_config(spec_from_dict({**BASE, "family": "multi-label"}, "ml.yaml"), "base", "full")
    assert ml.data.multi_label and ml.eval.protocol == "multi_label"
    fs = spec_from_dict({**BASE, "family": "few-shot"}, "fs.yaml")
    with pytest.raises(SpecError, match="few_shot"):
        resolve_config(fs, "base", "full")
    fs2 = spec_from_dict({**BASE, "family": "few-shot", "train": {"few_shot": 2}}, "fs.yaml")
    assert resolve_config(fs2, "base", "full").train.few_shot == 2


def test_world_placeholder_needs_a_world_value(tmp_path):
    body = {**BASE, "scales": {"smoke": {"model.pretrained": "${world.nothing}"}}}
    spec = load_spec(write_spec(tmp_path, body))
    with pytest.raises(SpecError, match="no world value 'nothing'"):
        resolve_config(spec, "base", "smoke", world=fake_world(tmp_path))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "experiments").glob("*.yaml")))
def test_every_shipped_spec_loads(name):
    spec = load_spec(REPO / "experiments" / name)
    assert spec.variants


def test_structural_errors_list_allowed_fields_without_union_noise(tmp_path):
    body = {**BASE, "resources": {"full": {"slurm": {"partitionn": "gpu"}}},
            "variants": {"a": {"init_from": {"variant": "a", "spek": "s"}, "cellz": []}}}
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, body))
    msg = str(err.value)
    assert "resources.full.slurm.partitionn: got 'gpu'; unknown field. Allowed:" in msg and "partition," in msg
    assert "variants.a.init_from.spek: got 's'; unknown field. Allowed: spec, variant" in msg
    assert "variants.a.cellz" in msg and "cells" in msg
    assert "InitFromSpec" not in msg and "valid string" not in msg


def test_the_slurm_docs_worked_example_is_the_shipped_spec():
    import re

    import yaml

    doc = (REPO / "docs" / "slurm.md").read_text()
    block = re.search(r"```yaml\n(name: k400_slurm\n.*?)```", doc, re.S)
    assert block, "docs/slurm.md: the worked example (name: k400_slurm) is gone"
    shipped = REPO / "experiments" / "k400_slurm.yaml"
    assert yaml.safe_load(block.group(1)) == yaml.safe_load(shipped.read_text())
    assert load_spec(shipped).variants.keys() == {"video", "attributes"}


def test_builtin_scale_replacing_an_explicit_spec_value_warns(tmp_path):
    import warnings

    from harness.spec import ScaleOverrideWarning
    from tests.harness.worldstub import fake_world as stub_world

    body = {**BASE, "model": {"backbone": "bike-tiny", "frames": 16}}
    spec = load_spec(write_spec(tmp_path, body))
    world = stub_world(tmp_path)
    with pytest.warns(ScaleOverrideWarning) as caught:
        cfg = resolve_config(spec, "base", "smoke", world=world)
    assert cfg.model.frames == 8  # the built-in smoke scale still wins: only the silence is gone
    (msg,) = [str(w.message) for w in caught if issubclass(w.category, ScaleOverrideWarning)]
    assert "model.frames = 16 (spec) -> 8" in msg and "scales.smoke" in msg
    assert "model.backbone" not in msg  # the same value is no replacement
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleOverrideWarning)
        assert resolve_config(spec, "base", "full").model.frames == 16
        kept = load_spec(write_spec(tmp_path, {**body, "scales": {"smoke": {"model.frames": 16}}}, "kept.yaml"))
        assert resolve_config(kept, "base", "smoke", world=world).model.frames == 16


def test_a_cell_the_paper_does_not_have_is_refused_with_the_nearest_keys(tmp_path):
    body = {**BASE, "variants": {"base": {"cells": [{"table": "6a", "row": "ours", "column": "top1", "metric": "video_top1"}]}}}
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, body))
    text = str(err.value)
    assert "spec.yaml" in text and "variants.base.cells[0]" in text and "'6a/ours/top1'" in text
    assert "nearest:" in text and "6a/" in text


def test_every_shipped_spec_fills_only_published_cells():
    for path in sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml")):
        load_spec(path)  # raises on a cell the registry lacks
