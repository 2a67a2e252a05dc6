"""A run's pictures (``bike.engine.figures``): written by a tiny run, their numbers checked against
the method's own functions and the run's cached scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.bike.engine.tinyrun import CLASSES, make_dataset, tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from bike.train import run

    root = tmp_path_factory.mktemp("figs")
    data = make_dataset(root / "data", per_class_train=2, per_class_val=2)
    config = tiny_config(data, attributes={"enabled": True}, train={"epochs": 1}, eval={"figures": 4})
    run_dir = root / "run"
    result = run(config, run_dir, progress=False)
    assert result["status"] == "done"
    return config, run_dir


def _read(run_dir, name):
    return json.loads((run_dir / "figures" / f"{name}.json").read_text())


def test_a_tiny_run_writes_its_pictures(tiny_run):
    config, run_dir = tiny_run
    for name in ("saliency", "attributes", "confusion", "per_class", "training"):
        png = run_dir / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (run_dir / "figures" / f"{name}.json").is_file()
    sal = _read(run_dir, "saliency")
    assert len(sal["videos"]) == 4 and sal["frames"] == config.model.frames
    train = _read(run_dir, "training")
    assert len(train["train"]["loss"]) >= 1 and all(np.isfinite(train["train"]["loss"]))


def test_saliency_rows_are_those_of_video_concept_spotting(tiny_run):
    from bike.engine.datasets import build_dataset, split_records
    from bike.evaluate import load_run_model
    from bike.saliency import video_concept_spotting

    config, run_dir = tiny_run
    model = load_run_model(run_dir).model
    records = {r.video_id: r for r in split_records(config, "val")[0]}
    data = _read(run_dir, "saliency")
    text = model.class_text()
    for v in data["videos"]:
        ds = build_dataset(config, [records[v["video_id"]]], train=False, num_classes=len(CLASSES), views=(1, 1),
                           mean=model.backbone.image_mean, std=model.backbone.image_std)
        with torch.no_grad():
            x = model.video_branch.encode_video(model.frame_features(ds[0].clip.unsqueeze(0)))
            logits, sal = video_concept_spotting(x, text.tokens, text.cls, tau=config.model.vcs_tau, return_saliency=True)
        assert v["label"] == CLASSES.index(v["label_name"])
        assert v["pred"] == int(logits[0].argmax())
        for key, cls in (("saliency_true", v["label"]), ("saliency_pred", v["pred"])):
            row = np.asarray(v[key])
            assert row.shape == (config.model.frames,)
            assert row.sum() == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(row, sal[0, cls].numpy(), atol=1e-5)
        assert v["window"] is None  # not a world video: no true window known


def test_confusion_matrix_counts_the_cached_predictions(tiny_run):
    from bike.engine.caches import load_score_cache
    from bike.fusion import fuse

    config, run_dir = tiny_run
    cache = load_score_cache(run_dir, "val")
    fused = fuse(cache.video_scores, cache.attr_scores, config.fusion_lambda, config.fusion.transform,
                 kind_v=cache.score_kind, dtype=np.float64)
    pred = fused.argmax(axis=1)
    expected = np.zeros((3, 3), dtype=int)
    for y, p in zip(cache.labels, pred):
        expected[y, p] += 1
    conf = _read(run_dir, "confusion")
    assert conf["scores"] == "fused" and conf["classes"] == CLASSES
    assert conf["matrix"] == expected.tolist()
    per = _read(run_dir, "per_class")
    assert per["accuracy"] == pytest.approx([expected[k, k] / expected[k].sum() for k in range(3)])
    top1 = json.loads((run_dir / "result.json").read_text())["metrics"]["fused_top1"]
    assert 100 * np.trace(expected) / expected.sum() == pytest.approx(top1)


def test_attributes_picture_lists_each_videos_phrases_and_fused_top5(tiny_run):
    from bike.engine.caches import load_score_cache

    config, run_dir = tiny_run
    cache = load_score_cache(run_dir, "val")
    data = _read(run_dir, "attributes")
    index = {v: i for i, v in enumerate(cache.video_ids)}
    for v in data["videos"]:
        assert v["attributes"] == cache.attributes[index[v["video_id"]]]
        assert len(v["top5"]) == min(5, len(CLASSES)) and v["top5"][0]["score"] >= v["top5"][-1]["score"]
    hits = sum(CLASSES[y] in a[:5] for a, y in zip(cache.attributes, cache.labels))
    assert data["own_class_in_top5"] == {"videos": hits, "of": cache.num_videos}


def test_no_pictures_with_figures_zero(tmp_path):
    from bike.engine.figures import sample_rows, write_run_figures

    config = tiny_config({"root": str(tmp_path), "num_workers": 0}, eval={"figures": 0})
    assert write_run_figures(config, tmp_path) == [] and not (tmp_path / "figures").exists()
    assert sample_rows(10, 4) == [0, 3, 6, 9] and sample_rows(3, 8) == [0, 1, 2] and sample_rows(5, 0) == []


def test_world_action_windows_replay_the_rendered_ones(tmp_path):
    """The window drawn at smoke scale is the one the world rendered (replayed from its stream)."""
    from bike.world.build import MANIFEST
    from bike.world.config import world_config
    from bike.world.dataset import plan_world, write_video
    from bike.world.windows import action_windows, world_root_of

    cfg, seed = world_config("test"), 3
    (tmp_path / MANIFEST).write_text(json.dumps({"config": json.loads(json.dumps(cfg.to_dict())), "seed": seed,
                                                 "config_hash": cfg.content_hash(seed)}))
    jobs = plan_world(cfg, seed).general_val[:3] + plan_world(cfg, seed).multi_test[:1]
    rendered = {str(tmp_path / j.rel_path): write_video(str(tmp_path), cfg, seed, j) for j in jobs}
    assert world_root_of(tmp_path / "videos" / "general") == tmp_path.resolve()
    got = action_windows(tmp_path, list(rendered) + [str(tmp_path / "elsewhere.mp4")])
    assert set(got) == set(rendered)
    for path, instances in rendered.items():
        assert got[path]["windows"] == [[i.start, i.end] for i in instances]
        assert got[path]["frames"] == cfg.frames
        for s, e in got[path]["windows"]:
            assert cfg.window[0] * cfg.frames - 1 <= e - s <= cfg.window[1] * cfg.frames + 1
