import json
import os
import warnings

import decord
import pytest
import torch

import bike.world.build as build_mod
from bike.config import DataConfig, RunConfig
from bike.data.lists import read_charades_classes, read_charades_test, read_charades_train, read_class_csv, read_video_list
from bike.world import WorldError, build_world, load_world
from bike.world.__main__ import main
from bike.world.config import MOTION_WORDS, world_config


def test_lists_parse_with_the_real_readers(test_world):
    w, c = test_world, test_world.counts
    general = read_class_csv(w.path("general_classes"))
    novel = read_class_csv(w.path("novel_classes"))
    assert len(general) == c["classes_seen"] and len(novel) == c["classes_novel"]
    assert not set(general) & set(novel)
    train = read_video_list(w.path("general_train"), w.video_root, len(general))
    val = read_video_list(w.path("general_val"), w.video_root, len(general))
    assert len(train) == c["general_train"] and len(val) == c["general_val"]
    assert sorted({r.label for r in train}) == list(range(len(general)))
    # the class directory of every video names its label
    assert all(general[r.label].replace(" ", "_") in r.path for r in train + val)
    nval = read_video_list(w.path("novel_val"), w.video_root, len(novel))
    assert len(nval) == c["novel_val"] and all(os.path.isfile(r.path) for r in train + val + nval)


def test_videos_are_real_mp4s(test_world):
    cfg = test_world.config
    r = read_video_list(test_world.path("general_val"), test_world.video_root)[0]
    reader = decord.VideoReader(r.path, num_threads=1)
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    assert frames.shape == (cfg["frames"], cfg["size"], cfg["size"], 3)
    assert frames.std(axis=0).mean() > 1.0  # something moves


def test_charades_files(test_world):
    w = test_world
    names = read_charades_classes(w.path("multilabel_classes"))
    assert len(names) == w.counts["classes_multilabel"] and set(names) <= set(read_class_csv(w.path("general_classes")))
    train = read_charades_train(w.path("multilabel_train"), w.path("multilabel_root"), len(names))
    total = w.config["frames"] / w.config["fps"]
    assert len(train) == 2 * w.counts["multilabel_train_videos"]  # two action instances per video
    assert all(0 <= r.start < r.end <= total + 1e-6 and os.path.isfile(r.path) for r in train)
    test = read_charades_test(w.path("multilabel_test"), w.path("multilabel_root"), len(names))
    assert len(test) == w.counts["multilabel_test_videos"]
    assert all(len(r.label) == 2 for r in test) and all(os.path.isfile(r.path) for r in test)


def test_lexicons(test_world):
    world = test_world.lexicons["world"].read_text().splitlines()
    objects = test_world.lexicons["world_objects"].read_text().splitlines()
    names = test_world.class_names
    assert set(names["general"]) <= set(world) and not set(names["novel"]) & set(world)
    assert len(set(world)) == len(world) and all(p.strip() == p and p for p in world + objects)
    motions = {w for words in MOTION_WORDS.values() for w in words}
    assert not any(m in p for p in objects for m in motions)


def test_config_fragments_validate(test_world):
    for family in ("general", "zero_shot", "few_shot", "multi_label"):
        data = DataConfig(**test_world.data_config(family))
        assert os.path.isfile(data.class_file) and os.path.isfile(data.val_list)
    run = RunConfig(**test_world.config_overrides("multi_label", lexicon="world_objects"))
    assert run.data.format == "charades" and run.data.multi_label
    assert run.model.backbone == "bike-micro" and os.path.isfile(run.model.pretrained)
    assert run.model.resolution == 32 and run.model.frames == test_world.frames
    assert run.attributes.lexicon.endswith("world_objects.txt")
    with pytest.raises(ValueError, match="family"):
        test_world.data_config("closed_world")


def test_manifest_and_rebuild_is_a_no_op(test_world):
    root = test_world.root
    manifest = root / "manifest.json"
    before = (manifest.stat().st_mtime_ns, test_world.checkpoint.stat().st_mtime_ns)
    again = build_world(root, size="test")
    assert again == test_world
    assert (manifest.stat().st_mtime_ns, test_world.checkpoint.stat().st_mtime_ns) == before
    assert load_world(root) == test_world
    m = json.loads(manifest.read_text())
    assert m["config_hash"] == world_config("test").content_hash(0) != world_config("test").content_hash(1)
    assert test_world.config_hash in test_world.checkpoint.name
    zs = m["metrics"]["zero_shot_novel"]
    assert set(zs) >= {"frame", "video", "chance"} and zs["chance"] == 1 / test_world.counts["classes_novel"]


def test_checkpoint_is_a_state_dict(test_world):
    sd = torch.load(test_world.checkpoint, weights_only=True)
    assert isinstance(sd, dict) and "visual.conv1.weight" in sd


def test_cli(test_world, tmp_path, capsys):
    assert main(["build", "--root", str(test_world.root), "--size", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["config_hash"] == test_world.config_hash
    assert main(["info", "--root", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_crash_leaves_no_manifest_and_rebuild_reuses_checkpoint(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(build_mod, "write_text_files", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        build_world(tmp_path, size="test", pretrain_steps=5)
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(WorldError, match="manifest.json"):
        load_world(tmp_path)
    assert len(list((tmp_path / "clip").glob("*.pt"))) == 1  # written atomically before the crash
    monkeypatch.undo()
    messages = []
    info = build_world(tmp_path, size="test", pretrain_steps=5, progress=messages.append)
    assert any("reusing checkpoint" in m for m in messages)
    assert (tmp_path / "manifest.json").is_file() and info.checkpoint.is_file()


def test_bad_size_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="size"):
        build_world(tmp_path, size="huge")


def test_a_world_built_with_settings_keeps_them_and_is_never_replaced_silently(tmp_path, capsys):
    from harness.cli import main as cli_main
    from harness.expand import bike_world

    root = tmp_path / "w"
    argv = ["world", "build", "--size", "test", "--root", str(root), "--results", str(tmp_path),
            "--set", "window=0.6,0.9", "--set", "pretrain_steps=5", "--set", "pretrain_tail_every=2"]
    assert cli_main(argv) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["settings"] == {"window": [0.6, 0.9], "pretrain_steps": 5, "pretrain_tail_every": 2}
    assert manifest["config"]["window"] == [0.6, 0.9]
    assert manifest["config_hash"] == world_config("test", window=(0.6, 0.9), pretrain_steps=5,
                                                    pretrain_tail_every=2).content_hash(0)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    # the same command again reuses it; without the settings it is refused, naming them
    assert cli_main(argv) == 0
    capsys.readouterr()
    assert cli_main(argv[:-6]) == 2
    err = capsys.readouterr().err
    assert "--set window=0.6,0.9" in err and "no --set" in err and "nothing was deleted" in err
    # a command that uses the world (table6, run, paper) takes it with its settings, without rebuilding
    split = bike_world(root)("general")
    assert split is not None
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    assert load_world(root).settings == {"window": (0.6, 0.9), "pretrain_steps": 5, "pretrain_tail_every": 2}


def test_settings_that_repeat_the_preset_name_the_same_world(tmp_path, capsys):
    """``--set window=0.35,0.7`` on the test world (whose preset it is) builds the world that no ``--set``
    names: a later command without it reuses the world instead of refusing it."""
    from harness.cli import main as cli_main

    root = tmp_path / "w"
    base = ["world", "build", "--size", "test", "--root", str(root), "--results", str(tmp_path),
            "--set", "pretrain_steps=5"]
    assert cli_main(base + ["--set", "window=0.35,0.7"]) == 0
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert cli_main(base) == 0
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    # an older bikebench's manifest (another config hash) that recorded the setting while the preset was
    # another one: the same world, rebuilt in place rather than refused
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["settings"] == {"pretrain_steps": 5}
    manifest["settings"]["window"] = [0.35, 0.7]
    manifest["config_hash"] = "0" * 10
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert cli_main(base) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["settings"] == {"pretrain_steps": 5} and manifest["config_hash"] != "0" * 10
    assert cli_main(base[:-2] + ["--set", "pretrain_steps=6"]) == 2  # another world: refused
    assert "pretrain_steps=5" in capsys.readouterr().err


def test_world_settings_are_read_as_their_fields_types_and_bad_ones_name_the_field():
    from bike.world.config import parse_settings

    got = parse_settings(["window=0.5, 0.8", "pretrain_tail_every=4", "pretrain_holdout_novel=false",
                          "model=bike-micro", "noise_std=2"], "test")
    assert got == {"window": (0.5, 0.8), "pretrain_tail_every": 4, "pretrain_holdout_novel": False,
                   "model": "bike-micro", "noise_std": 2.0}
    assert isinstance(got["noise_std"], float)
    for item, needle in (("window=0.6", "'window' expects 2 comma-separated float values"),
                         ("windw=0.6,0.9", "unknown field 'windw'"),
                         ("pretrain_steps=many", "'pretrain_steps' expects int"),
                         ("generator_version=2", "unknown field 'generator_version'"),
                         ("window=0.9,0.6", "WorldConfig.window"),
                         ("pretrain_tail_every=-1", "WorldConfig.pretrain_tail_every"),
                         ("window", "expected KEY=VALUE")):
        with pytest.raises(ValueError, match=needle):
            parse_settings([item])


def test_pretraining_options_switched_off_leave_the_world_identity_unchanged():
    """The options added later enter the hash only when on: with them off (the test world, and the default
    world with the first design's settings), the hash is the one the first worlds were built under (sha256
    of the sorted, compact JSON of the other fields and the seed); each option switched on changes it."""
    import hashlib
    from dataclasses import asdict

    from bike.world.config import FIRST_DESIGN

    later = {"pretrain_negative_captions", "pretrain_tail_every", "pretrain_tail_captions", "pretrain_list_p",
             "lexicon_facets", "trail_p", "pretrain_shift", "width", "pretrain_prefix_every", "pretrain_prefix_captions",
             "pretrain_logit_scale", "pretrain_bare_captions", "pretrain_bare_full", "backbone_step"}
    for size in ("default", "test"):
        first = dict(FIRST_DESIGN, pretrain_list_p=0.0, trail_p=1.0, pretrain_shift=0.03, width=0, pretrain_prefix_every=0)
        cfg = world_config(size, **first)
        old = {k: v for k, v in asdict(cfg).items() if k not in later}
        payload = json.dumps({"config": old, "seed": 3}, sort_keys=True, separators=(",", ":"))
        assert cfg.content_hash(3) == hashlib.sha256(payload.encode()).hexdigest()[:10]
        for unused in ({"pretrain_tail_captions": 4}, {"pretrain_prefix_captions": 4}):  # their switch is off
            assert world_config(size, **dict(first, **unused)).content_hash(3) == cfg.content_hash(3)
        hashes = {world_config(size, **dict(first, **kw)).content_hash(3) for kw in
                  ({"pretrain_negative_captions": 8}, {"pretrain_tail_every": 4},
                   {"pretrain_tail_every": 4, "pretrain_tail_captions": 4}, {"pretrain_list_p": 0.2},
                   {"lexicon_facets": True}, {"trail_p": 0.5}, {"pretrain_shift": 0.125}, {"width": 80},
                   {"pretrain_prefix_every": 2}, {"pretrain_prefix_every": 2, "pretrain_prefix_captions": 4},
                   {"pretrain_logit_scale": 100.0}, {"pretrain_bare_captions": False}, {"pretrain_bare_full": False},
                   {"backbone_step": 50})}
        assert len(hashes) == 14 and cfg.content_hash(3) not in hashes
    assert world_config("test") == world_config("test", **FIRST_DESIGN)  # the test world keeps the first design
    default = world_config("default")
    assert (default.window, default.pretrain_negative_captions, default.pretrain_tail_every,
            default.lexicon_facets) == ((0.6, 0.9), 8, 4, True)
    # the default's options are on, so they are hashed; the two still off are not
    hashed = {k: v for k, v in asdict(default).items()
              if k not in ("pretrain_list_p", "trail_p", "pretrain_shift", "width", "pretrain_prefix_every",
                           "pretrain_prefix_captions", "pretrain_logit_scale", "pretrain_bare_captions",
                           "pretrain_bare_full", "backbone_step")}
    payload = json.dumps({"config": hashed, "seed": 3}, sort_keys=True, separators=(",", ":"))
    assert default.content_hash(3) == hashlib.sha256(payload.encode()).hexdigest()[:10]
    assert default.content_hash(3) != world_config("default", **FIRST_DESIGN).content_hash(3)


def test_lexicon_facets_name_every_facet_of_the_seen_actions_in_words_the_clip_was_pretrained_on():
    import open_clip

    from bike.world.captions import vocabulary_phrases
    from bike.world.dataset import plan_world, world_lexicon
    from bike.world.snapshots import Vocabulary

    cfg = world_config("test")
    seen = plan_world(cfg, 0).seen
    plain = world_lexicon(cfg, seen)
    faceted = world_lexicon(world_config("test", lexicon_facets=True), seen)
    added = faceted[len(plain):]
    assert faceted[:len(plain)] == plain and len(set(faceted)) == len(faceted)
    c, s, m = seen[0].colour, seen[0].shape, seen[0].motion
    for phrase in (f"{s} {m}", f"{c} shape {m}", f"{c} shape", s, f"shape {m}"):
        assert phrase in added
    n_c, n_s, n_m = len(cfg.colours), len(cfg.shapes), len(cfg.motions)
    assert len(added) == n_s * n_m + n_c * n_m + n_c + n_s + n_m
    tok = open_clip.get_tokenizer(cfg.model)
    known = set(tok(vocabulary_phrases(Vocabulary.of(cfg))).flatten().tolist())
    assert set(tok(added).flatten().tolist()) <= known


def test_a_backbone_step_world_starts_its_runs_from_the_snapshot_and_generates_with_the_final_clip(tmp_path, monkeypatch):
    """``--set backbone_step=N``: the world keeps the CLIP as it stood after N optimiser steps of its
    pretraining (the runs' backbone and attribute text encoder) beside the final CLIP (the attribute
    generator); a run of Table 6 resolves to those weights, and the world's identity covers both."""
    import bike.world.pretrain as pretrain_mod
    from harness.expand import bike_world, expand
    from harness.spec import ScaleOverrideWarning, load_spec

    # reference: the model and its trained token rows captured right after the 3rd AdamW update
    seen, captured = {}, {}
    orig_init, orig_step = pretrain_mod.ShortTextEncoder.__init__, torch.optim.AdamW.step

    def init(self, model, token_ids):
        orig_init(self, model, token_ids)
        seen["text"] = self

    def step(self, *args, **kwargs):
        out = orig_step(self, *args, **kwargs)
        if not any(p is seen["text"].rows for g in self.param_groups for p in g["params"]):
            return out  # another optimiser (the build's linear probe)
        seen["updates"] = seen.get("updates", 0) + 1
        if seen["updates"] == 3:
            text = seen["text"]
            state = {k: v.detach().clone() for k, v in text.model.state_dict().items()}
            state["token_embedding.weight"][text.token_ids] = text.rows.detach()
            captured.update(state)
        return out

    monkeypatch.setattr(pretrain_mod.ShortTextEncoder, "__init__", init)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    root = tmp_path / "w"
    info = build_world(root, size="test", seed=0, pretrain_steps=6, backbone_step=3)
    monkeypatch.undo()
    assert seen["updates"] == 6
    backbone = torch.load(info.backbone_checkpoint, weights_only=True)
    final = torch.load(info.checkpoint, weights_only=True)
    assert backbone.keys() == captured.keys() == final.keys()
    assert all(torch.equal(backbone[k], captured[k]) for k in captured)
    assert not torch.equal(backbone["visual.conv1.weight"], final["visual.conv1.weight"])
    # the rows no caption uses keep their random initialisation in both
    used = set(seen["text"].token_ids.tolist())
    unused = next(i for i in range(1000, 2000) if i not in used)
    assert torch.equal(backbone["token_embedding.weight"][unused], final["token_embedding.weight"][unused])
    trained = seen["text"].token_ids[1]
    assert not torch.equal(backbone["token_embedding.weight"][trained], final["token_embedding.weight"][trained])

    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["backbone_checkpoint"] == f"clip/bike-micro-{info.config_hash}-step3.pt"
    assert manifest["backbone_checkpoint_sha256"] == build_mod.file_sha256(info.backbone_checkpoint)
    assert info.identity["backbone_checkpoint_sha256"] == manifest["backbone_checkpoint_sha256"]
    assert manifest["metrics"]["backbone"]["step"] == 3
    assert 0.0 <= manifest["metrics"]["backbone"]["zero_shot_general"]["video"] <= 1.0
    assert load_world(root).backbone_checkpoint == info.backbone_checkpoint

    # Table 6 at smoke scale: every run starts from the snapshot, its attributes are generated by the final CLIP
    said: list[str] = []
    world = bike_world(root, log=said.append)
    assert world("general").values["generator"] == str(info.checkpoint)
    assert f"the runs' backbone its step 3 (sha256 {info.backbone_checkpoint_sha256[:12]})" in said[0]
    with warnings.catch_warnings():  # the test world's 4 frames replace the spec's 8, as the scale says
        warnings.simplefilter("ignore", ScaleOverrideWarning)
        plan = expand(load_spec("experiments/table6.yaml"), "smoke", tmp_path / "results", world=world)
    for run in plan.runs:
        cfg = run.config
        assert cfg.model.pretrained == str(info.backbone_checkpoint)
        assert cfg.attributes.text_encoder_pretrained == str(info.backbone_checkpoint)
        assert cfg.attributes.generator(cfg.model) == ("bike-micro", str(info.checkpoint))

    # a second build reuses both checkpoints; one without the backbone file is rebuilt
    assert build_world(root, size="test", seed=0, pretrain_steps=6, backbone_step=3).backbone_checkpoint_sha256 == \
        info.backbone_checkpoint_sha256
    info.backbone_checkpoint.unlink()
    again = build_world(root, size="test", seed=0, pretrain_steps=6, backbone_step=3)
    assert again.backbone_checkpoint_sha256 == info.backbone_checkpoint_sha256  # byte-identical on a rebuild


def test_a_world_of_one_clip_gives_no_generator_of_its_own(test_world):
    """Without ``backbone_step`` (every world built so far) the runs' CLIP is the generator: the smoke
    scale's ``${world.generator}`` is null, so no run's identity changes."""
    from harness.expand import bike_world

    assert test_world.backbone_checkpoint is None and test_world.generator_checkpoint is None
    assert "backbone_checkpoint_sha256" not in test_world.identity
    assert bike_world(test_world.root)("general").values["generator"] is None
    assert test_world.model_config()["pretrained"] == str(test_world.checkpoint)


def test_backbone_step_beyond_the_pretraining_is_an_error():
    with pytest.raises(ValueError, match=r"backbone_step: got 101; expected 0 \(one CLIP\) or a step of the pretraining"):
        world_config("test", backbone_step=101)
