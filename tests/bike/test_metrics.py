"""Metrics: top-k, mean class accuracy, mAP, the official running mAP, view aggregation."""

import json
import math
import pickle

import numpy as np
import pytest
import torch

from bike.metrics import (
    Metric,
    ViewAggregator,
    aggregate_views,
    average_precision,
    charades_running_map,
    mean_average_precision,
    mean_class_accuracy,
    topk_accuracy,
)


def test_topk_hand_example_and_counts():
    scores = np.array(
        [
            [0.1, 0.7, 0.2],  # label 1 -> top1 hit
            [0.5, 0.3, 0.2],  # label 2 -> rank 2 (top3 only)
            [0.2, 0.5, 0.3],  # label 2 -> rank 1 (top2)
            [0.9, 0.0, 0.1],  # unlabelled
        ]
    )
    labels = np.array([1, 2, 2, -1])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 3))
    assert acc["top1"] == pytest.approx(100 / 3)
    assert acc["top2"] == pytest.approx(200 / 3)
    assert acc["top3"] == pytest.approx(100.0)
    assert acc["top1"].counts == {"evaluated": 3, "skipped": 1}


def test_topk_k_larger_than_classes_is_nan_and_all_skipped():
    acc = topk_accuracy(np.eye(3), np.arange(3), ks=(1, 5))
    assert acc["top1"] == 100.0
    assert math.isnan(acc["top5"]) and acc["top5"].counts == {"evaluated": 0, "skipped": 3}


def test_topk_ties_are_not_optimistic_and_nan_rows_miss():
    scores = np.zeros((2, 4))
    # all tied: label 0 wins the tie (lower index), label 3 does not
    acc = topk_accuracy(scores, np.array([0, 3]), ks=(1,))
    assert acc["top1"] == 50.0
    nan_scores = np.array([[np.nan, 0.0], [1.0, 0.0]])
    assert topk_accuracy(nan_scores, np.array([1, 0]), ks=(1,))["top1"] == 50.0


def test_topk_matches_torch_topk_without_ties(rng):
    scores = torch.randn(200, 17, generator=rng)
    labels = torch.randint(0, 17, (200,), generator=rng)
    acc = topk_accuracy(scores, labels, ks=(1, 5))
    top5 = scores.topk(5, dim=1).indices
    ref1 = (top5[:, 0] == labels).float().mean().item() * 100
    ref5 = (top5 == labels[:, None]).any(dim=1).float().mean().item() * 100
    assert acc["top1"] == pytest.approx(ref1)
    assert acc["top5"] == pytest.approx(ref5)


def test_topk_multi_hot_labels():
    scores = np.array([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    targets = np.array([[0, 1, 1], [0, 1, 0], [0, 0, 0]])
    acc = topk_accuracy(scores, targets, ks=(1, 2))
    assert acc["top1"] == 0.0
    assert acc["top2"] == 100.0  # row0: class 1 at rank 1, row1: class 1 at rank 1
    assert acc["top1"].counts == {"evaluated": 2, "skipped": 1}


def test_topk_bad_input_messages():
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        topk_accuracy(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="out of range"):
        topk_accuracy(np.zeros((2, 3)), np.array([0, 3]))


def test_mean_class_accuracy_weights_classes_equally():
    # class 0: 3 videos all right; class 1: 1 video wrong; class 2: no video
    scores = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=float)
    labels = np.array([0, 0, 0, 1])
    m = mean_class_accuracy(scores, labels)
    assert m == pytest.approx(50.0)
    assert m.counts == {"evaluated": 2, "skipped": 1}
    assert topk_accuracy(scores, labels, ks=(1,))["top1"] == pytest.approx(75.0)


def _ap_bruteforce(s, t):
    order = np.argsort(-s)
    t = t[order]
    precs = [t[: i + 1].sum() / (i + 1) for i in range(len(t)) if t[i]]
    return np.mean(precs)


def test_average_precision_hand_values_and_ties():
    # ranks of positives 1 and 3: AP = (1/1 + 2/3) / 2
    ap = average_precision(np.array([[0.9], [0.8], [0.7], [0.1]]), np.array([[1], [0], [1], [0]]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    # a positive tied with a negative: one threshold, precision 1/2
    ap = average_precision(np.array([[0.5], [0.5]]), np.array([[1], [0]]))
    assert ap[0] == pytest.approx(0.5)


def test_map_matches_bruteforce_and_skips_classes_without_positives():
    g = np.random.default_rng(0)
    scores = g.normal(size=(50, 6))
    targets = (g.random((50, 6)) < 0.3).astype(int)
    targets[:, 4] = 0
    m = mean_average_precision(scores, targets)
    ref = np.mean([_ap_bruteforce(scores[:, j], targets[:, j]) for j in range(6) if j != 4]) * 100
    assert m == pytest.approx(ref)
    assert m.counts == {"evaluated": 5, "skipped": 1}


def test_map_perfect_ranking_is_100():
    targets = np.eye(5, dtype=int)
    assert mean_average_precision(targets * 1.0, targets) == pytest.approx(100.0)


def _torchnet_ap_loop(s, t):
    aps = []
    for j in range(s.shape[1]):
        order = np.argsort(-s[:, j], kind="stable")
        truth = t[order, j]
        tp = np.cumsum(truth)
        prec = tp / np.arange(1, len(truth) + 1)
        aps.append((prec * truth).sum() / max(truth.sum(), 1))
    return np.mean(aps)


def test_charades_running_map_is_batch_weighted_average_of_running_maps():
    g = np.random.default_rng(1)
    scores = g.normal(size=(10, 4))
    targets = (g.random((10, 4)) < 0.4).astype(int)
    bs = 4
    running = [(_torchnet_ap_loop(scores[:e], targets[:e]), e - s) for s, e in [(0, 4), (4, 8), (8, 10)]]
    ref = sum(v * w for v, w in running) / 10 * 100
    got = charades_running_map(scores, targets, batch_size=bs)
    assert got == pytest.approx(ref)
    # differs from the true mAP in general
    assert got != pytest.approx(float(mean_average_precision(scores, targets)))


def test_metric_is_a_float_that_serialises_and_pickles():
    m = Metric(12.5, 8, 2)
    assert json.loads(json.dumps({"m": m})) == {"m": 12.5}
    m2 = pickle.loads(pickle.dumps(m))
    assert m2 == 12.5 and m2.counts == {"evaluated": 8, "skipped": 2}


def test_aggregate_views_modes():
    x = np.array([[[2.0, 0.0], [0.0, 4.0]]])  # 1 video, 2 views
    soft = aggregate_views(x, "softmax_mean")
    e = lambda a, b: np.exp(a) / (np.exp(a) + np.exp(b))  # noqa: E731
    assert soft[0] == pytest.approx([(e(2, 0) + e(0, 4)) / 2, (e(0, 2) + e(4, 0)) / 2])
    assert aggregate_views(x, "logit_mean")[0] == pytest.approx([1.0, 2.0])


def test_view_aggregator_streams_views_across_batches_and_ranks(rng):
    n, v, k = 7, 4, 5
    logits = torch.randn(n, v, k, generator=rng)
    labels = torch.randint(0, k, (n,), generator=rng)
    ids = [f"vid{i}" for i in range(n)]
    # the views in a shuffled order, in uneven batches, split over two "ranks"
    order = torch.randperm(n * v, generator=rng).tolist()
    aggs = [ViewAggregator(k), ViewAggregator(k)]
    for b, start in enumerate(range(0, len(order), 3)):
        chunk = order[start : start + 3]
        agg = aggs[b % 2]
        agg.add([ids[i // v] for i in chunk], logits[[i // v for i in chunk], [i % v for i in chunk]],
                labels[[i // v for i in chunk]], view_indices=[i % v for i in chunk])
    aggs[0].merge(aggs[1].state())
    res = aggs[0].result(expected_views=v)
    assert sorted(res.video_ids) == ids
    rows = [res.video_ids.index(i) for i in ids]
    np.testing.assert_allclose(res.scores[rows], aggregate_views(logits.numpy(), "softmax_mean"), rtol=1e-6)
    np.testing.assert_array_equal(res.labels[rows], labels.numpy())
    # memory: one running row per video, whatever the number of views
    assert len(aggs[0]) == n


def test_view_aggregator_refuses_double_counting_and_label_conflicts():
    agg = ViewAggregator(2, mode="logit_mean")
    agg.add(["a"], np.zeros((1, 2)), [0], view_indices=[0])
    with pytest.raises(ValueError, match="view 0 added twice"):
        agg.add(["a"], np.zeros((1, 2)), [0], view_indices=[0])
    with pytest.raises(ValueError, match="disagree on the label"):
        agg.add(["a"], np.zeros((1, 2)), [1], view_indices=[1])
    with pytest.raises(ValueError, match="view count other than 2"):
        agg.result(expected_views=2)


def _released_charades_test_loop(scores, targets, world_size, per_gpu_batch):
    """test_charades.py's loop, written from the released text: a DistributedSampler (shuffled, seed 0) per
    rank, each step all-gathers every rank's batch (rank 0 first), maper.add(output, labels) and
    mAP.update(maper.value(), labels.size(0)); the printed number is mAP.avg * 100."""
    from torch.utils.data import DistributedSampler

    n = len(scores)
    per_rank = [list(DistributedSampler(range(n), num_replicas=world_size, rank=r)) for r in range(world_size)]
    seen = []
    total = count = 0.0
    for start in range(0, len(per_rank[0]), per_gpu_batch):
        gathered = [i for r in range(world_size) for i in per_rank[r][start:start + per_gpu_batch]]
        seen += gathered
        value = _torchnet_ap_loop(scores[seen], targets[seen])  # mAPMeter.value(): mean of APMeter's per-class AP
        total += value * len(gathered)
        count += len(gathered)
    return total / count * 100


@pytest.mark.parametrize("n, world_size, per_gpu", [(23, 4, 2), (10, 3, 2), (7, 8, 1)])
def test_charades_running_map_in_the_released_sampler_order(n, world_size, per_gpu):
    g = np.random.default_rng(n)
    scores = g.normal(size=(n, 5))
    targets = (g.random((n, 5)) < 0.4).astype(int)
    ref = _released_charades_test_loop(scores, targets, world_size, per_gpu)
    got = charades_running_map(scores, targets, batch_size=world_size * per_gpu, world_size=world_size)
    assert got == pytest.approx(ref)
    assert got.evaluated == n
    with pytest.raises(ValueError, match="not a multiple of world_size"):
        charades_running_map(scores, targets, batch_size=world_size + 1, world_size=world_size)


def test_single_label_map_is_the_released_activitynet_formula():
    """utils.mean_average_precision of the released code, written from its text: gt one-hot, probs =
    softmax(probs, dim=1), torchnet mAPMeter (AP = Σ precision at each positive / #positives, every class)."""
    import torch

    from bike.metrics import single_label_map

    g = torch.Generator().manual_seed(3)
    probs = torch.rand(40, 6, generator=g)
    labels = torch.randint(0, 5, (40,), generator=g)  # class 5 has no video: AP 0, still averaged
    sm = torch.softmax(probs, dim=1)
    aps = []
    for c in range(6):
        order = torch.argsort(sm[:, c], descending=True, stable=True)
        truth = (labels[order] == c).float()
        tp = torch.cumsum(truth, 0)
        precision = tp / torch.arange(1, 41)
        aps.append(float((precision * truth).sum() / max(float(truth.sum()), 1.0)))
    ref = 100.0 * sum(aps) / 6
    got = single_label_map(probs.numpy(), labels.numpy())
    assert float(got) == pytest.approx(ref, abs=1e-5) and got.counts["evaluated"] == 40  # reference in float32
