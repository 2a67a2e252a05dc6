"""Score caches: round trip, joins by video id, fusion of cached scores, view aggregation, class subsets."""

import json

import numpy as np
import pytest

from bike.engine.caches import (
    CacheError,
    column_subset,
    evaluate_class_splits,
    join_score_caches,
    load_score_cache,
    read_cache,
    split_cache_dir,
    video_side_scores,
    write_cache,
)
from bike.engine.zero_shot import frame_level_scores_np
from bike.fusion import fuse
from bike.metrics import aggregate_views

N, K, T, D, V = 30, 6, 4, 8, 3


def _cache(tmp_path, seed=0, order=None, name="val", **kw):
    g = np.random.default_rng(seed)
    ids = [f"v{i:02d}.mp4" for i in range(N)]
    labels = np.arange(N) % K
    video = g.normal(size=(N, K))
    attr = g.normal(size=(N, K))
    if order is not None:
        ids, labels, video, attr = [ids[i] for i in order], labels[order], video[order], attr[order]
    d = write_cache(
        tmp_path / name, video_ids=ids, labels=labels, video_scores=video, attr_scores=attr,
        classes=[f"c{k}" for k in range(K)], split="val", config_hash="abc", **kw,
    )
    return d, ids, labels, video, attr


def test_roundtrip_manifest_and_dtypes(tmp_path):
    fe = np.random.default_rng(1).normal(size=(N, T, D))
    d, ids, labels, video, attr = _cache(tmp_path, frame_emb=fe, class_emb=np.ones((K, D)))
    c = read_cache(d)
    assert c.video_ids == ids and c.classes == [f"c{k}" for k in range(K)]
    np.testing.assert_array_equal(c.labels, labels)
    np.testing.assert_allclose(c.video_scores, video.astype(np.float32))
    assert c.frame_emb.shape == (N, T, D) and c.view_scores is None
    m = json.loads((d / "manifest.json").read_text())
    assert m["arrays"]["video_scores"] == {"file": "video_scores.npy", "shape": [N, K], "dtype": "float32"}
    assert m["split"] == "val" and m["config_hash"] == "abc"
    assert split_cache_dir("/r", "tune").as_posix() == "/r/cache/tune"


def test_shape_errors_and_tampering_are_reported(tmp_path):
    with pytest.raises(ValueError, match="attr_scores.npy"):
        write_cache(tmp_path / "x", video_ids=["a"], labels=np.zeros(1), video_scores=np.zeros((1, 2)),
                    attr_scores=np.zeros((1, 3)), classes=["p", "q"], split="val", config_hash="h")
    d, *_ = _cache(tmp_path)
    np.save(d / "video_scores.npy", np.zeros((N, K + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="differ from the manifest"):
        read_cache(d)
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_cache(tmp_path / "nothing")


def test_join_by_video_id_not_row_order(tmp_path):
    perm = np.random.default_rng(5).permutation(N)
    d1, ids, labels, video, attr = _cache(tmp_path / "a")
    d2, *_ = _cache(tmp_path / "b", order=perm)
    joined = join_score_caches(read_cache(d1), read_cache(d2))
    assert joined.video_ids == ids
    np.testing.assert_array_equal(joined.attr_scores, attr.astype(np.float32))
    np.testing.assert_array_equal(joined.video_scores, video.astype(np.float32))


def _ref_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fusion_of_two_joined_caches_is_eq4_on_aligned_rows(tmp_path):
    perm = np.random.default_rng(5).permutation(N)
    d1, ids, labels, video, attr = _cache(tmp_path / "a")
    d2, *_ = _cache(tmp_path / "b", order=perm)
    c = join_score_caches(read_cache(d1), read_cache(d2))
    fused = fuse(c.video_scores, c.attr_scores, 0.7, "softmax", kind_v=c.score_kind, dtype=np.float64)
    v, a = video.astype(np.float32).astype(np.float64), attr.astype(np.float32).astype(np.float64)
    ref = 0.7 * _ref_softmax(v) + (1 - 0.7) * _ref_softmax(a)  # Eq. 4, released code's transform
    assert fused.dtype == np.float64
    np.testing.assert_allclose(fused, ref, rtol=1e-12)


def test_reader_names_the_inconsistent_file(tmp_path):
    d, *_ = _cache(tmp_path)
    np.save(d / "labels.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(CacheError, match=r"labels\.npy: 5 labels for 30 video ids"):
        read_cache(d)
    (d / "attr_scores.npy").unlink()
    with pytest.raises(CacheError, match=r"attr_scores\.npy: file not found"):
        read_cache(d)
    with pytest.raises(CacheError, match="no split cached"):
        load_score_cache(tmp_path / "no-run")


def test_multi_view_cache_reaggregates_views(tmp_path):
    vs = np.random.default_rng(3).normal(size=(N, V, K)).astype(np.float16)
    agg = aggregate_views(vs.astype(np.float64), "softmax_mean")
    d, *_ = _cache(tmp_path, view_scores=vs)
    c = read_cache(d)
    s, kind = video_side_scores(c, "softmax_mean")
    assert kind == "probabilities"
    np.testing.assert_allclose(s, agg, rtol=1e-6)
    s2, kind2 = video_side_scores(c, "logit_mean")
    np.testing.assert_allclose(s2, vs.astype(np.float64).mean(1)) and kind2 == "logits"


def _official_multi_split(vis, text, labels, n_splits):
    # the authors' multi_split_test (frame-level per-split softmax), written independently
    out = []
    for split in range(n_splits):
        np.random.seed(split)
        sel_classes = np.random.permutation(len(text))[: len(text) // 2]
        sel = np.array([l in sel_classes for l in labels])
        sub = np.unique(labels[sel])
        tl = np.array([int(np.where(l == sub)[0][0]) for l in labels[sel]])
        t = text[sub] / np.linalg.norm(text[sub], axis=-1, keepdims=True)
        logits = 100.0 * np.einsum("ntd,kd->ntk", vis[sel], t)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        sim = (e / e.sum(-1, keepdims=True)).mean(1)
        out.append((sim.argmax(1) == tl).mean() * 100)
    return np.array(out)


def test_class_splits_frame_path_matches_official_and_column_subsets(tmp_path):
    g = np.random.default_rng(0)
    fe = g.normal(size=(N, T, D)) * 0.05
    ce = g.normal(size=(K, D))
    labels = np.arange(N) % K
    splits = []
    for s in range(4):
        np.random.seed(s)
        splits.append(np.random.permutation(K)[: K // 2])
    res = evaluate_class_splits(labels, splits, lambda r, c: frame_level_scores_np(fe[r], ce[c]))
    np.testing.assert_allclose(res.top1, _official_multi_split(fe, ce, labels, 4), atol=1e-9)
    assert res.top1_std == pytest.approx(np.std(res.top1)) and res.classes == [K // 2] * 4
    # column subsets of one full score matrix
    scores = g.normal(size=(N, K))
    res2 = evaluate_class_splits(labels, splits[:1], column_subset(scores))
    rows = np.isin(labels, splits[0])
    cols = np.sort(splits[0])
    ref = (cols[scores[rows][:, cols].argmax(1)] == labels[rows]).mean() * 100
    assert res2.top1[0] == pytest.approx(ref) and res2.videos[0] == rows.sum()
