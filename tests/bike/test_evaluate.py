"""bike.evaluate: multi-view aggregation into caches, zero-shot protocols, multi-label mAP, bad videos, CLI."""

import json
from pathlib import Path

import numpy as np
import pytest

import bike.evaluate as evaluate_mod
from bike.engine.caches import half_class_accuracy, read_cache, video_side_scores
from bike.engine.zero_shot import frame_level_scores_np
from bike.metrics import aggregate_views, mean_average_precision, topk_accuracy
from tests.bike.engine.tinyrun import make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("eval_data"), per_class_train=1, per_class_val=2)


@pytest.fixture(scope="module")
def ml_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("eval_ml"), per_class_train=1, per_class_val=2, multi_label=True)


def test_multi_view_scores_stream_into_the_cache(data, tmp_path):
    cfg = tiny_config(data, stage="eval", eval={"clips": 2, "crops": 3, "batch_size": 4})
    res = evaluate_mod.run(cfg, tmp_path / "r", progress=False)
    c = read_cache(tmp_path / "r" / "cache" / "val")
    assert res["counts"] == {"evaluated": 6, "skipped": 0, "bad_files": []}
    assert c.view_scores.shape == (6, 6, 3) and c.score_kind == "probabilities"
    assert c.video_ids == [f"val/{n}_{j}.mp4" for n in ("red", "green", "blue") for j in range(2)]
    # the streamed aggregation equals re-aggregating the per-view logits (float16 on disk)
    np.testing.assert_allclose(c.video_scores, aggregate_views(c.view_scores.astype(np.float64), "softmax_mean"), atol=2e-3)
    s, kind = video_side_scores(c, "logit_mean")
    assert kind == "logits" and s.shape == (6, 3)
    assert res["metrics"]["top1"] == pytest.approx(float(topk_accuracy(c.video_scores, c.labels, ks=(1,))["top1"]))
    assert res["views"] == [2, 3] and not list((tmp_path / "r" / "cache" / "val").glob(".*"))


def test_closed_with_untrained_attributes_fuses_at_lambda(data, tmp_path):
    cfg = tiny_config(data, stage="eval", attributes={"enabled": True}, fusion={"lam": 0.7})
    res = evaluate_mod.run(cfg, tmp_path / "r", progress=False)
    c = read_cache(tmp_path / "r" / "cache" / "val")
    assert c.attr_scores.shape == (6, 3) and c.score_kind == "logits"
    from bike.fusion import fuse

    fused = fuse(np.asarray(c.video_scores, np.float64), np.asarray(c.attr_scores, np.float64), 0.7, "softmax")
    assert res["metrics"]["fused_top1"] == pytest.approx(float(topk_accuracy(fused, c.labels, ks=(1,))["top1"]))
    assert res["metrics"]["top1"] == res["metrics"]["fused_top1"] and res["metrics"]["fusion_lambda"] == 0.7
    assert (tmp_path / "r" / "cache" / "attributes.json").is_file()


def test_zero_shot_half_frame_path_matches_the_cache(data, tmp_path):
    cfg = tiny_config(data, stage="eval", eval={"protocol": "zero_shot_half", "zero_shot_splits": 4})
    res = evaluate_mod.run(cfg, tmp_path / "r", progress=False)
    c = read_cache(tmp_path / "r" / "cache" / "val")
    assert c.frame_emb.shape == (6, 2, 32) and c.score_kind == "probabilities"
    # full classes: the cached scores are the frame-level scores of the cached features
    np.testing.assert_allclose(c.video_scores, frame_level_scores_np(c.frame_emb, c.class_emb), rtol=1e-5, atol=1e-6)
    again = half_class_accuracy(c, num_splits=4, path="frame")
    m = res["metrics"]
    assert m["zs_half_mean"] == pytest.approx(again.top1_mean) and m["zs_half_std"] == pytest.approx(again.top1_std)
    assert m["zs_half_std"] == pytest.approx(np.std([m[f"zs_half_split{i}"] for i in range(4)]))
    assert "zs_full_top1" in m


def test_zero_shot_k600_split_files(data, tmp_path):
    split_file = tmp_path / "split1.txt"
    split_file.write_text("red\nblue\n")
    cfg = tiny_config(data, stage="eval", eval={"protocol": "zero_shot_k600", "zero_shot_path": "full",
                                                "k600_split_files": [str(split_file)]})
    res = evaluate_mod.run(cfg, tmp_path / "r", progress=False)
    c = read_cache(tmp_path / "r" / "cache" / "val")
    rows = np.isin(c.labels, [0, 2])
    sub = np.asarray(c.video_scores)[rows][:, [0, 2]]
    ref = (np.array([0, 2])[sub.argmax(1)] == c.labels[rows]).mean() * 100
    assert res["metrics"]["zs_k600_mean"] == pytest.approx(ref) and res["metrics"]["zs_k600_std"] == 0.0


def test_multi_label_reports_map_and_the_official_running_map(ml_data, tmp_path):
    cfg = tiny_config(ml_data, stage="eval", eval={"protocol": "multi_label", "batch_size": 4})
    res = evaluate_mod.run(cfg, tmp_path / "r", progress=False)
    c = read_cache(tmp_path / "r" / "cache" / "val")
    assert c.labels.shape == (6, 3) and c.labels.sum() == 9  # 3 videos carry two labels
    assert res["metrics"]["mAP"] == pytest.approx(float(mean_average_precision(c.video_scores, c.labels)))
    assert "mAP_official_running" in res["metrics"] and res["metric_counts"]["mAP"]["evaluated"] == 3


def test_bad_videos_are_skipped_and_reported_when_asked(data, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "broken.mp4").write_bytes(b"\x00" * 100)
    lst = root / "val.txt"
    lst.write_text(Path(data["val_list"]).read_text() + f"{root / 'broken.mp4'} 1\n")
    strict = tiny_config({**data, "val_list": str(lst)}, stage="eval")
    with pytest.raises(Exception, match="broken.mp4"):
        evaluate_mod.run(strict, tmp_path / "strict", progress=False)
    lenient = tiny_config({**data, "val_list": str(lst), "skip_bad_eval": True}, stage="eval")
    res = evaluate_mod.run(lenient, tmp_path / "lenient", progress=False)
    assert res["counts"]["evaluated"] == 6 and res["counts"]["skipped"] == 1
    assert res["counts"]["bad_files"][0].endswith("broken.mp4")


def test_main_and_idempotence(data, tmp_path):
    cfg = tiny_config(data, stage="eval")
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    argv = ["--config", str(path), "--run-dir", str(tmp_path / "r")]
    assert evaluate_mod.main(argv) == 0
    first = json.loads((tmp_path / "r" / "result.json").read_text())
    assert evaluate_mod.main(argv) == 0
    assert json.loads((tmp_path / "r" / "result.json").read_text()) == first
    assert first["run_id"] == cfg.content_hash() and first["selected_on"] is None


def test_load_run_model_gives_the_scores_the_run_cached(data, tmp_path):
    """A trained run's model, loaded from its directory alone, scores the validation videos as the
    run's own evaluation did (video logits and attribute scores in ``cache/val/``)."""
    import torch

    import bike.train as train_mod
    from bike.engine.caches import load_score_cache
    from bike.engine.datasets import build_dataset, eval_loader, split_records
    from bike.engine.eval_loop import attribute_scores

    cfg = tiny_config(data, attributes={"enabled": True}, train={"epochs": 1, "batch_size": 3, "warmup_epochs": 0})
    run = tmp_path / "run"
    train_mod.run(cfg, run, progress=False)
    cache = load_score_cache(run, "val")

    model, config, weights = evaluate_mod.load_run_model(run)
    assert config == cfg and weights == run / "checkpoints" / "best.pt" and not model.training
    records, _ = split_records(config, "val")
    dataset = build_dataset(config, records, train=False, num_classes=len(cache.classes), views=(1, 1),
                            mean=model.backbone.image_mean, std=model.backbone.image_std)
    logits = {}
    with torch.no_grad():
        for batch in eval_loader(dataset, 4, 0, 1, 0):
            logits.update(zip(batch.video_ids, model(batch.clips).numpy()))
    assert sorted(logits) == sorted(cache.video_ids)
    np.testing.assert_allclose(np.stack([logits[v] for v in cache.video_ids]), cache.video_scores, rtol=1e-4, atol=1e-5)
    attr = attribute_scores(model, cache.video_ids, dict(zip(cache.video_ids, cache.attributes)))
    np.testing.assert_allclose(attr, cache.attr_scores, rtol=1e-4, atol=1e-5)

    # the check can fail: the same model without the run's weights scores differently
    (run / "checkpoints" / "best.pt").rename(run / "best.pt.away")
    (run / "checkpoints" / "latest.pt").rename(run / "latest.pt.away")
    fresh, _, none = evaluate_mod.load_run_model(run)
    assert none is None
    with torch.no_grad():
        clips = next(iter(eval_loader(dataset, 4, 0, 1, 0)))
        assert not np.allclose(fresh(clips.clips).numpy(), np.stack([logits[v] for v in clips.video_ids]), atol=1e-3)
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        evaluate_mod.load_run_model(tmp_path / "nothing")


def _k600_split_lists(data: dict, tmp_path: Path) -> tuple[list[str], list[str], list[dict[str, int]]]:
    """Three split lists of the tiny videos, each labelled by its own class file, as the released
    test_split{s}_exist.txt / k160_labels_split{s}.csv: the class files differ (names without videos
    among them, other orders, 6, 7 and 5 classes) and so do the lists."""
    splits = [["red", "purple", "blue", "orange", "cyan", "yellow"],
              ["green", "red", "pink", "black", "white", "grey", "brown"],
              ["teal", "blue", "green", "violet", "red"]]
    lists, files, labels = [], [], []
    for s, names in enumerate(splits, start=1):
        f = tmp_path / f"k160_labels_split{s}.csv"
        f.write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
        entries = {f"val/{n}_{j}.mp4": i for i, n in enumerate(names) for j in range(2) if n in ("red", "green", "blue")}
        lst = tmp_path / f"test_split{s}_exist.txt"
        lst.write_text("".join(f"{v} {y}\n" for v, y in entries.items()))
        lists.append(str(lst)), files.append(str(f)), labels.append(entries)
    return lists, files, labels


@pytest.mark.parametrize("path", ["full", "frame"])
def test_zero_shot_k600_released_split_lists(data, tmp_path, path):
    """Each released split list is its own evaluation against its own class file; the reported numbers are
    each split's top-1 over its classes and their mean and population std."""
    lists, files, labels = _k600_split_lists(data, tmp_path)
    cfg = tiny_config({**data, "val_list": lists[0], "class_file": files[0]}, stage="eval",
                      eval={"protocol": "zero_shot_k600", "zero_shot_path": path, "k600_split_lists": lists,
                            "k600_split_files": files, "figures": 0})
    res = evaluate_mod.run(cfg, tmp_path / "r", progress=False)
    m = res["metrics"]
    top1, top5, caches = [], [], []
    for s in range(3):
        c = read_cache(tmp_path / "r" / "cache" / f"val_k600_split{s + 1}")
        names = [ln.split(",")[1] for ln in Path(files[s]).read_text().splitlines()[1:]]
        assert c.classes == names and c.video_scores.shape == (len(labels[s]), len(names))
        # the labels are the list's, indexing this split's class file
        assert dict(zip(c.video_ids, c.labels.tolist())) == labels[s]
        # the released rule: top-k of the scores over the split's classes (top-1: the argmax)
        scores = np.asarray(c.video_scores, dtype=np.float64)
        top1.append(float((scores.argmax(1) == c.labels).mean() * 100))
        above = (scores > scores[np.arange(len(scores)), c.labels][:, None]).sum(1)
        top5.append(float((above < 5).mean() * 100))
        assert m[f"zs_k600_split{s}"] == pytest.approx(top1[-1])
        caches.append(c)
    assert m["zs_k600_mean"] == pytest.approx(np.mean(top1)) and m["zs_k600_std"] == pytest.approx(np.std(top1))
    assert m["zs_k600_top5_mean"] == pytest.approx(np.mean(top5)) and m["zs_k600_top5_std"] == pytest.approx(np.std(top5))
    assert m["top1"] == pytest.approx(np.mean(top1)) and m["top5"] == pytest.approx(np.mean(top5))
    assert "zs_full_top1" not in m and len(set(top5)) > 1
    assert res["counts"]["evaluated"] == 4 + 4 + 6
    assert [(s["videos"], s["classes"]) for s in res["k600_splits"]] == [(4, 6), (4, 7), (6, 5)]
    assert not (tmp_path / "r" / "cache" / "val").exists()
    if path == "full":
        # a video's logit for a class does not depend on the other classes: the same logits, column by name
        for a, b in ((0, 1), (0, 2), (1, 2)):
            ca, cb = caches[a], caches[b]
            vids = [v for v in ca.video_ids if v in cb.video_ids]
            cols = [n for n in ca.classes if n in cb.classes]
            sa = np.asarray(ca.video_scores)[np.ix_([ca.video_ids.index(v) for v in vids], [ca.classes.index(n) for n in cols])]
            sb = np.asarray(cb.video_scores)[np.ix_([cb.video_ids.index(v) for v in vids], [cb.classes.index(n) for n in cols])]
            assert vids and cols
            np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-5)

    # an interrupted run resumes: the finished splits' caches are reused, not scored again
    (tmp_path / "r" / "result.json").unlink()
    again = evaluate_mod.run(cfg, tmp_path / "r", progress=False)
    assert again["metrics"] == res["metrics"]
    assert [s["video_scores_from"] for s in again["k600_splits"]] == [
        str(tmp_path / "r" / "cache" / f"val_k600_split{s}") for s in (1, 2, 3)]


def test_zero_shot_k600_split_lists_need_one_class_file_each(data, tmp_path):
    lists, files, _ = _k600_split_lists(data, tmp_path)
    with pytest.raises(ValueError, match=r"eval.k600_split_lists: got 3 list\(s\) but eval.k600_split_files has 2"):
        tiny_config(data, stage="eval", eval={"protocol": "zero_shot_k600", "k600_split_lists": lists,
                                              "k600_split_files": files[:2]})
    with pytest.raises(ValueError, match="eval.k600_split_lists.*zero_shot_k600 only"):
        tiny_config(data, stage="eval", eval={"protocol": "zero_shot_full", "k600_split_lists": lists,
                                              "k600_split_files": files})
