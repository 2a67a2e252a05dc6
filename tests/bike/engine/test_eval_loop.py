"""bike.engine.eval_loop: per-video scores of a split (single and multi-view), metrics, attribute
scores, and a whole split evaluated into its cache.

Every expected value is computed here, by hand, from the inputs (or from the cache the loop wrote):
the loop's output is never compared with another production function's.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bike.data.dataset import BadVideoLog, VideoItem
from bike.engine.caches import read_cache
from bike.engine.eval_loop import attribute_scores, closed_metrics, evaluate_split, protocol_metrics, score_videos
from bike.engine.model import BikeModel
from tests.bike.engine.tinyrun import CLASSES, make_dataset, tiny_config

T, S, D, K = 3, 4, 3, 4  # frames, pixels, feature size (= RGB channels of the stand-in encoder), classes


# ------------------------------------------------------------------------------ a stand-in model
class _LinearModel:
    """What score_videos needs of a BikeModel, with scores that are easy to write out by hand.

    frame features = each frame's mean RGB ``[B, T, 3]``; video logits = the frames' mean feature
    dotted with the class [CLS] embeddings ``[K, 3]``.
    """

    num_classes = K

    def __init__(self) -> None:
        self.cls = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]]) * 3.0

    def eval(self):
        return self

    def class_text(self):
        return SimpleNamespace(cls=self.cls)

    def word_mask(self):
        raise AssertionError("vcs_tokens='all' needs no word mask")

    def frame_features(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.mean(dim=(-1, -2))

    def video_logits(self, frames: torch.Tensor, text, mask) -> torch.Tensor:
        return frames.mean(dim=1) @ text.cls.T


def _frame_rgb(video: int, view: int) -> np.ndarray:
    """The mean RGB of each frame ``[T, 3]`` of ``(video, view)`` (each frame is one flat colour)."""
    g = np.random.default_rng(100 * video + view)
    return g.uniform(-1.0, 1.0, (T, 3)).astype(np.float32)


class _Dataset(torch.utils.data.Dataset):
    """``n`` videos x ``views`` views of flat-coloured frames, in test mode; ``records`` list the
    videos in an order of their own (the order the results must come back in)."""

    def __init__(self, n: int, views: int, record_order: list[int]):
        self.n, self.num_views = n, views
        self.records = [SimpleNamespace(video_id=f"v{i}") for i in record_order]
        self.bad_log = BadVideoLog(total=n, train=False)

    def __len__(self) -> int:
        return self.n * self.num_views

    def __getitem__(self, i: int) -> VideoItem:
        video, view = divmod(i, self.num_views)
        rgb = torch.from_numpy(_frame_rgb(video, view))
        clip = rgb[:, :, None, None].expand(T, 3, S, S).contiguous()
        return VideoItem(clip, video % K, f"v{video}", view)


def _config(**eval_fields):
    return tiny_config({"root": "/nonexistent", "num_workers": 0}, eval={"batch_size": 4, **eval_fields})


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


CLS = _LinearModel().cls.numpy().astype(np.float64)


def _view_logits(video: int, view: int) -> np.ndarray:
    return _frame_rgb(video, view).astype(np.float64).mean(axis=0) @ CLS.T


# ------------------------------------------------------------------------------ score_videos
def test_one_view_gives_the_logits_in_record_order():
    order = [2, 0, 4, 1, 3]
    vs = score_videos(_LinearModel(), _Dataset(5, 1, order), _config(), torch.device("cpu"))
    assert vs.video_ids == [f"v{i}" for i in order]
    assert vs.labels.tolist() == [i % K for i in order]
    assert vs.score_kind == "logits" and vs.views == 1
    expected = np.stack([_view_logits(i, 0) for i in order])
    np.testing.assert_allclose(vs.scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vs.class_emb, CLS, rtol=1e-6)
    assert vs.view_scores is None and vs.frame_emb is None
    assert vs.counts["skipped"] == 0 and vs.counts["bad_files"] == []


@pytest.mark.parametrize("aggregation", ["softmax_mean", "logit_mean"])
def test_several_views_are_averaged_per_video(aggregation, tmp_path):
    n, views, order = 5, 3, [0, 1, 2, 3, 4]
    path = tmp_path / "view_scores.npy"
    vs = score_videos(_LinearModel(), _Dataset(n, views, order), _config(view_aggregation=aggregation),
                      torch.device("cpu"), view_scores_path=path)
    per_view = np.stack([[_view_logits(i, w) for w in range(views)] for i in order])  # [N, V, K]
    if aggregation == "softmax_mean":  # mean over views of each view's softmax (temperature 1)
        expected, kind = _softmax(per_view).mean(axis=1), "probabilities"
    else:  # mean over views of the logits
        expected, kind = per_view.mean(axis=1), "logits"
    assert vs.score_kind == kind and vs.views == views
    np.testing.assert_allclose(vs.scores, expected, rtol=1e-5, atol=1e-6)
    # every view's logits are kept, float16, at [video, view]
    assert vs.view_scores.shape == (n, views, K) and vs.view_scores.dtype == np.float16
    np.testing.assert_allclose(np.asarray(vs.view_scores, np.float64), per_view, rtol=2e-3, atol=2e-3)
    assert path.is_file() and not list(tmp_path.glob(".*"))  # the spill files are gone


def test_frame_mode_averages_per_frame_softmax_and_collects_frames():
    n, views, order = 4, 2, [3, 1, 0, 2]
    vs = score_videos(_LinearModel(), _Dataset(n, views, order), _config(), torch.device("cpu"),
                      mode="frame", collect_frames=True)
    unit = CLS / np.linalg.norm(CLS, axis=1, keepdims=True)
    expected, frames = [], []
    for i in order:
        per_view = []
        for w in range(views):
            f = _frame_rgb(i, w).astype(np.float64)  # [T, D]: raw (not normalised) frame features
            per_view.append(_softmax(100.0 * f @ unit.T).mean(axis=0))  # mean over frames of the softmax
        expected.append(np.mean(per_view, axis=0))  # probabilities: averaged over views
        frames.append(np.mean([_frame_rgb(i, w) for w in range(views)], axis=0))
    assert vs.score_kind == "probabilities"
    np.testing.assert_allclose(vs.scores, np.stack(expected), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(vs.scores.sum(axis=1), 1.0, rtol=1e-5)
    assert vs.frame_emb.shape == (n, T, D)
    np.testing.assert_allclose(vs.frame_emb, np.stack(frames), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ metrics
def _by_hand_top(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return 100.0 * float(np.mean([labels[i] in top[i] for i in range(len(labels))]))


def test_closed_metrics_single_label():
    g = np.random.default_rng(0)
    scores, labels = g.normal(size=(40, 7)), g.integers(0, 6, 40)  # class 6 has no video
    m = closed_metrics("video_", scores, labels)
    assert set(m) == {"video_top1", "video_top5", "video_mean_class"}
    assert m["video_top1"] == pytest.approx(_by_hand_top(scores, labels, 1))
    assert m["video_top5"] == pytest.approx(_by_hand_top(scores, labels, 5))
    hit = scores.argmax(axis=1) == labels
    per_class = [hit[labels == c].mean() for c in range(7) if (labels == c).any()]
    assert m["video_mean_class"] == pytest.approx(100.0 * np.mean(per_class))
    assert m["video_top1"].counts == {"evaluated": 40, "skipped": 0}


def test_closed_metrics_multi_label_is_map():
    g = np.random.default_rng(1)
    scores = g.normal(size=(30, 5))
    targets = (g.uniform(size=(30, 5)) < 0.3).astype(np.int64)
    targets[:, 4] = 0  # a class without positives does not count
    m = closed_metrics("", scores, targets)
    assert set(m) == {"mAP"}
    aps = []
    for c in range(4):
        ranked = targets[np.argsort(-scores[:, c]), c]
        hits = np.cumsum(ranked)
        aps.append(np.mean([hits[r] / (r + 1) for r in np.flatnonzero(ranked)]))  # precision at each positive
    assert m["mAP"] == pytest.approx(100.0 * np.mean(aps))


def test_zero_shot_full_protocol_reports_top1_over_all_classes():
    g = np.random.default_rng(2)
    scores, labels = g.normal(size=(25, 6)), g.integers(0, 6, 25)
    vs = SimpleNamespace(video_ids=[str(i) for i in range(25)], labels=labels, scores=scores, score_kind="logits",
                         views=1, class_emb=np.zeros((6, 0)), frame_emb=None, view_scores=None, counts={})
    m = protocol_metrics(_config(protocol="zero_shot_full"), vs, None)
    assert m["top1"] == m["zs_full_top1"] == pytest.approx(_by_hand_top(scores, labels, 1))
    assert m["top5"] == m["zs_full_top5"] == pytest.approx(_by_hand_top(scores, labels, 5))


# ------------------------------------------------------------------------------ attribute_scores
def test_attribute_scores_rank_in_the_order_asked_and_refuse_what_is_missing():
    seen = {}

    class _Branch:
        def score(self, backbone, ranked, class_names):
            seen.update(backbone=backbone, ranked=ranked, class_names=class_names)
            return torch.tensor([[float(len(r)), float(len(r[0]))] for r in ranked])

    backbone = object()
    model = SimpleNamespace(attributes=_Branch(), backbone=backbone, attribute_text_encoder=backbone, class_names=["x", "y"], eval=lambda: None)
    attrs = {"a": ["p"], "b": ["qq", "r", "s"], "c": ["ttt", "u"]}
    out = attribute_scores(model, ["c", "a", "b"], attrs)
    assert seen["ranked"] == [attrs["c"], attrs["a"], attrs["b"]]
    assert seen["backbone"] is backbone and seen["class_names"] == ["x", "y"]
    assert out.dtype == np.float32 and out.tolist() == [[2.0, 3.0], [1.0, 1.0], [3.0, 2.0]]
    with pytest.raises(KeyError, match="'d'"):
        attribute_scores(model, ["a", "d"], attrs)
    with pytest.raises(ValueError, match="attributes"):
        attribute_scores(SimpleNamespace(attributes=None), ["a"], attrs)


# ------------------------------------------------------------------------------ evaluate_split
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("eval_loop_data"), per_class_train=1, per_class_val=2)


def _model(cfg):
    torch.manual_seed(cfg.seed)
    return BikeModel.from_config(cfg, CLASSES)


def test_evaluate_split_writes_the_cache_its_metrics_come_from(data, tmp_path):
    cfg = tiny_config(data, stage="eval")
    metrics, counts = evaluate_split(cfg, _model(cfg), tmp_path / "r", "val", torch.device("cpu"))
    c = read_cache(tmp_path / "r" / "cache" / "val")
    val_lines = [line.split() for line in Path(data["val_list"]).read_text().splitlines() if line.strip()]
    assert c.video_ids == [rel for rel, _ in val_lines]
    assert np.asarray(c.labels).tolist() == [int(lab) for _, lab in val_lines]
    scores, labels = np.asarray(c.video_scores, np.float64), np.asarray(c.labels)
    assert scores.shape == (6, len(CLASSES)) and c.score_kind == "logits"
    assert metrics["top1"] == metrics["video_top1"] == pytest.approx(_by_hand_top(scores, labels, 1))
    hit = scores.argmax(axis=1) == labels
    assert metrics["mean_class"] == pytest.approx(100.0 * np.mean([hit[labels == k].mean() for k in range(3)]))
    assert counts["evaluated"] == 6 and counts["skipped"] == 0 and counts["bad_files"] == []
    assert counts["video_scores_from"] is None
    assert counts["per_metric"]["top1"] == {"evaluated": 6, "skipped": 0}


def test_evaluate_split_without_write_leaves_no_cache(data, tmp_path):
    cfg = tiny_config(data, stage="eval", eval={"clips": 2, "batch_size": 4})
    metrics, counts = evaluate_split(cfg, _model(cfg), tmp_path / "r", "val", torch.device("cpu"), write=False)
    assert not (tmp_path / "r" / "cache").exists()
    assert counts["evaluated"] == 6 and 0.0 <= metrics["top1"] <= 100.0
