"""Recognition metrics and the per-video view aggregator.

Every metric is a percentage returned as a :class:`Metric` — a ``float`` that also carries how many
items it was computed over (``evaluated``) and how many it had to leave out (``skipped``), e.g.
unlabelled rows for top-k, classes without videos for mean class accuracy, classes without positives
for mAP. ``float(m)`` and JSON encoding see the plain number; ``m.counts`` gives
``{"evaluated": n, "skipped": m}``.

Shapes: N videos, K (= C) classes, V views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Sequence, Union

import numpy as np

from bike.fusion import softmax

ArrayLike = Union[np.ndarray, "torch.Tensor", Sequence]  # noqa: F821  (torch is optional here)
ViewAggregation = Literal["softmax_mean", "logit_mean"]


class Metric(float):
    """A metric value (percent) with the counts it was computed over.

    Behaves as a float everywhere (arithmetic, ``json.dumps``, formatting); NaN when nothing could be
    evaluated.
    """

    evaluated: int
    skipped: int

    def __new__(cls, value: float, evaluated: int, skipped: int = 0) -> "Metric":
        obj = super().__new__(cls, value)
        obj.evaluated = int(evaluated)
        obj.skipped = int(skipped)
        return obj

    @property
    def counts(self) -> dict[str, int]:
        return {"evaluated": self.evaluated, "skipped": self.skipped}

    def __reduce__(self):  # pickling keeps the counts
        return (Metric, (float(self), self.evaluated, self.skipped))

    def __repr__(self) -> str:
        return f"Metric({float(self):.4f}, evaluated={self.evaluated}, skipped={self.skipped})"


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view of a numpy array, torch tensor (any device/dtype) or sequence."""
    if isinstance(x, np.ndarray):
        return x
    detach = getattr(x, "detach", None)
    if detach is not None:
        t = detach().cpu()
        if str(t.dtype) in ("torch.bfloat16", "torch.float16"):
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    if scores.ndim != 2:
        raise ValueError(f"{name} must be [N, K], got shape {scores.shape}")
    return scores


# ----------------------------------------------------------------------------------------- top-k
#: Tie rules of :func:`topk_accuracy`: a stable sort (lower class index first) or the released code's
#: ``output.topk(max(ks), 1, True, True)`` (torch's own, implementation-defined order among equal scores).
TIE_RULES = ("lowest_index", "torch_topk")


def topk_accuracy(
    scores: ArrayLike, labels: ArrayLike, ks: Iterable[int] = (1, 5), ties: str = "lowest_index"
) -> dict[str, Metric]:
    """Top-k accuracy (percent) for each k, keyed ``"top{k}"``.

    scores: ``[N, K]`` (higher is better). labels: ``[N]`` class indices (rows with a negative label
    are unlabelled and skipped) or ``[N, K]`` multi-hot (a hit when any positive is in the top k;
    rows without positives are skipped). Ties are broken towards the lower class index (a stable
    descending sort), or, with ``ties="torch_topk"`` (single-label only), as the released code's
    ``accuracy()`` breaks them: the first k of ``torch.topk(scores, max(ks), sorted=True)``. Rows with
    a non-finite score count as misses. A k larger than K is not computable: its value is NaN with
    every row skipped.
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties={ties!r}; expected one of {TIE_RULES}")
    ks = list(ks)
    s = _check_scores(to_numpy(scores).astype(np.float64, copy=False))
    y = to_numpy(labels)
    n, k_classes = s.shape
    finite = np.isfinite(s).all(axis=1)
    if y.ndim == 1:
        if y.shape[0] != n:
            raise ValueError(f"labels has {y.shape[0]} rows, scores has {n}")
        y = y.astype(np.int64)
        if (y >= k_classes).any():
            raise ValueError(f"label {int(y.max())} out of range for {k_classes} classes")
        valid = y >= 0
        rows = np.nonzero(valid)[0]
        rank = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        if ties == "torch_topk":
            rank[rows] = _topk_rank(s[rows], y[rows], min(max(ks), k_classes) if ks else 1)
        else:
            rank[rows] = _true_rank(s[rows], y[rows])
    elif y.ndim == 2:
        if y.shape != s.shape:
            raise ValueError(f"multi-hot labels shape {y.shape} differs from scores shape {s.shape}")
        pos = y > 0
        valid = pos.any(axis=1)
        order = np.argsort(-s, axis=1, kind="stable")
        pos_sorted = np.take_along_axis(pos, order, axis=1)
        first = np.where(valid, pos_sorted.argmax(axis=1), np.iinfo(np.int64).max)
        rank = first.astype(np.int64)
    else:
        raise ValueError(f"labels must be [N] or [N, K], got shape {y.shape}")
    n_valid = int(valid.sum())
    out: dict[str, Metric] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"top-k needs k >= 1, got {k}")
        if k > k_classes or n_valid == 0:
            out[f"top{k}"] = Metric(math.nan, 0, n)
            continue
        hit = valid & finite & (rank < k)
        out[f"top{k}"] = Metric(100.0 * hit.sum() / n_valid, n_valid, n - n_valid)
    return out


def mean_class_accuracy(scores: ArrayLike, labels: ArrayLike) -> Metric:
    """Top-1 accuracy per class averaged over the classes that have at least one video (percent).

    Counts are classes: ``evaluated`` with ≥ 1 video, ``skipped`` without. scores ``[N, K]``,
    labels ``[N]`` (negative = unlabelled, ignored).
    """
    s = _check_scores(to_numpy(scores).astype(np.float64, copy=False))
    y = to_numpy(labels).astype(np.int64)
    if y.ndim != 1 or y.shape[0] != s.shape[0]:
        raise ValueError(f"labels must be [N] with N={s.shape[0]}, got shape {y.shape}")
    k_classes = s.shape[1]
    keep = y >= 0
    s, y = s[keep], y[keep]
    hit = topk_accuracy_rows(s, y, 1)
    per_class_n = np.bincount(y, minlength=k_classes)
    per_class_hit = np.bincount(y, weights=hit.astype(np.float64), minlength=k_classes)
    present = per_class_n > 0
    n_present = int(present.sum())
    if n_present == 0:
        return Metric(math.nan, 0, k_classes)
    value = 100.0 * float(np.mean(per_class_hit[present] / per_class_n[present]))
    return Metric(value, n_present, k_classes - n_present)


def _true_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of the true class per row ``[N]`` under a stable descending sort (ties: lower index first)."""
    n, k_classes = scores.shape
    true = scores[np.arange(n), labels]
    higher = (scores > true[:, None]).sum(axis=1)
    tie_before = ((scores == true[:, None]) & (np.arange(k_classes)[None, :] < labels[:, None])).sum(axis=1)
    return higher + tie_before


def _topk_rank(scores: np.ndarray, labels: np.ndarray, maxk: int) -> np.ndarray:
    """Position of the true class in ``torch.topk(scores, maxk)`` per row ``[N]`` (``maxk`` when absent)."""
    import torch

    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    pred = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), maxk, dim=1, largest=True, sorted=True).indices.numpy()
    hit = pred == labels[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), maxk).astype(np.int64)


def topk_accuracy_rows(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-row hit (bool ``[N]``) of single-label top-k with the tie rule of :func:`topk_accuracy`."""
    return (_true_rank(scores, labels) < k) & np.isfinite(scores).all(axis=1)


# ------------------------------------------------------------------------------------------ mAP
def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Average precision per class (fraction in [0, 1]; NaN for a class without positives).

    The step-wise definition AP = Σ_n (R_n − R_{n−1}) · P_n over the distinct score thresholds
    (tied scores enter together, as in scikit-learn's ``average_precision_score``).
    scores, targets: ``[N, C]``.
    """
    n, c = scores.shape
    out = np.full(c, np.nan)
    for j in range(c):
        t = targets[:, j] > 0
        n_pos = int(t.sum())
        if n_pos == 0:
            continue
        s = scores[:, j]
        order = np.argsort(-s, kind="stable")
        s_sorted, t_sorted = s[order], t[order]
        # the last position of each run of equal scores closes a threshold
        ends = np.r_[np.nonzero(np.diff(s_sorted))[0], n - 1]
        tps = np.cumsum(t_sorted)[ends]
        precision = tps / (ends + 1)
        recall = tps / n_pos
        out[j] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return out


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> Metric:
    """mAP (percent): AP per class averaged over the classes with at least one positive.

    scores: ``[N, C]``; targets: ``[N, C]`` multi-hot (> 0 is positive). Counts are classes.
    Rows with a non-finite score are ranked last for every class.
    """
    s = _check_scores(to_numpy(scores).astype(np.float64, copy=True))
    t = to_numpy(targets)
    if t.shape != s.shape:
        raise ValueError(f"targets shape {t.shape} differs from scores shape {s.shape}")
    s[~np.isfinite(s)] = -np.inf
    ap = average_precision(s, t)
    ok = ~np.isnan(ap)
    n_ok = int(ok.sum())
    if n_ok == 0:
        return Metric(math.nan, 0, s.shape[1])
    return Metric(100.0 * float(ap[ok].mean()), n_ok, s.shape[1] - n_ok)


def single_label_map(probs: ArrayLike, labels: ArrayLike) -> Metric:
    """The mAP the released code reports for ActivityNet (``utils.mean_average_precision``), percent:
    torchnet's ``mAPMeter`` over ``softmax(probs)`` (a softmax over the classes of the per-video
    probabilities it is given) against one-hot targets of ``labels`` ``[N]``; every class counts, a class
    without videos as AP 0. Counts are videos (unlabelled rows, label < 0, are left out)."""
    p = _check_scores(to_numpy(probs).astype(np.float64, copy=True))
    y = to_numpy(labels).astype(np.int64)
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must be [N] with N={p.shape[0]}, got shape {y.shape}")
    keep = y >= 0
    p, y = p[keep], y[keep]
    if len(y) == 0:
        return Metric(math.nan, 0, int((~keep).sum()))
    if (y >= p.shape[1]).any():
        raise ValueError(f"label {int(y.max())} out of range for {p.shape[1]} classes")
    p[~np.isfinite(p)] = -np.inf
    targets = np.zeros_like(p, dtype=np.int64)
    targets[np.arange(len(y)), y] = 1
    return Metric(100.0 * _torchnet_map(softmax(p), targets), len(y), int((~keep).sum()))


def _torchnet_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """torchnet's ``mAPMeter`` value (fraction): per-class AP = Σ precision at each positive / max(#pos, 1),
    every class included (a class without positives contributes 0); ranks by a stable descending sort."""
    n, c = scores.shape
    order = np.argsort(-scores, axis=0, kind="stable")
    truth = np.take_along_axis(targets > 0, order, axis=0)
    tp = np.cumsum(truth, axis=0)
    precision = tp / np.arange(1, n + 1)[:, None]
    ap = (precision * truth).sum(axis=0) / np.maximum(truth.sum(axis=0), 1)
    return float(ap.mean())


def distributed_sampler_steps(n: int, world_size: int, per_rank_batch: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each gathered step of the released Charades test loop.

    ``torch.utils.data.DistributedSampler(dataset)`` (shuffle, ``seed`` 0, epoch 0): ``torch.randperm(n)``
    under ``manual_seed(seed)``, padded with its own first indices to a multiple of ``world_size``, rank
    ``r`` taking ``[r::world_size]``; step ``i`` gathers every rank's ``i``-th batch of ``per_rank_batch``,
    rank 0 first (``all_gather``). Padding duplicates are counted, as the released test counts them.
    """
    import torch

    if world_size < 1 or per_rank_batch < 1:
        raise ValueError(f"world_size={world_size}, per_rank_batch={per_rank_batch}; expected >= 1")
    g = torch.Generator()
    g.manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    total = math.ceil(n / world_size) * world_size
    padding = total - n
    if padding <= n:
        order += order[:padding]
    else:
        order += (order * math.ceil(padding / n))[:padding]
    ranks = [order[r:total:world_size] for r in range(world_size)]
    per_rank = total // world_size
    return [
        np.asarray([i for r in ranks for i in r[start:start + per_rank_batch]], dtype=np.int64)
        for start in range(0, per_rank, per_rank_batch)
    ]


def charades_running_map(
    scores: ArrayLike,
    targets: ArrayLike,
    batch_size: int,
    world_size: Optional[int] = None,
    sampler_seed: int = 0,
) -> Metric:
    """The number the authors' Charades test prints (percent): NOT the mAP.

    The official test (``test_charades.py``) feeds each globally gathered batch to a torchnet ``mAPMeter``,
    reads the mAP of everything seen so far, and reports the batch-size-weighted average of these running
    values (``AverageMeter.update(maper.value(), labels.size(0))``). ``batch_size`` is the global batch of
    that loop (per-GPU batch × GPUs). Rows are taken in order, unless ``world_size`` is given: then in the
    order of the released loop's shuffled ``DistributedSampler`` over that many GPUs
    (:func:`distributed_sampler_steps`, padding included). Classes without positives count as AP 0, as
    in torchnet. ``scores`` are what the meter saw: the released test softmaxes the view-averaged softmax
    once more. Counts are videos.
    """
    s = _check_scores(to_numpy(scores).astype(np.float64, copy=True))
    t = to_numpy(targets)
    if t.shape != s.shape:
        raise ValueError(f"targets shape {t.shape} differs from scores shape {s.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = s.shape[0]
    if n == 0:
        return Metric(math.nan, 0, 0)
    s[~np.isfinite(s)] = -np.inf
    if world_size is None:
        steps = [np.arange(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    else:
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} is not a multiple of world_size={world_size} (per-GPU batch x GPUs)")
        steps = distributed_sampler_steps(n, world_size, batch_size // world_size, sampler_seed)
    order = np.concatenate(steps)
    s, t = s[order], t[order]
    total, weight, end = 0.0, 0, 0
    for step in steps:
        end += len(step)
        total += _torchnet_map(s[:end], t[:end]) * len(step)
        weight += len(step)
    return Metric(100.0 * total / weight, n, 0)


# ------------------------------------------------------------------------------ view aggregation
def aggregate_views(view_scores: ArrayLike, mode: ViewAggregation = "softmax_mean", temperature: float = 1.0) -> np.ndarray:
    """Combine per-view scores ``[N, V, K]`` into per-video scores ``[N, K]`` (float64).

    ``softmax_mean``: mean over views of softmax(logits / temperature) (official, temperature 1);
    ``logit_mean``: mean of the logits.
    """
    x = to_numpy(view_scores).astype(np.float64, copy=False)
    if x.ndim != 3:
        raise ValueError(f"view_scores must be [N, V, K], got shape {x.shape}")
    if mode == "softmax_mean":
        return softmax(x, temperature).mean(axis=1)
    if mode == "logit_mean":
        return x.mean(axis=1)
    raise ValueError(f"view aggregation must be 'softmax_mean' or 'logit_mean', got {mode!r}")


@dataclass
class AggregatedScores:
    """Per-video result of a :class:`ViewAggregator` (rows in first-seen order)."""

    video_ids: list[str]
    scores: np.ndarray  # [N, K] float64
    labels: Optional[np.ndarray]  # [N] int64 or [N, K] multi-hot, None when no labels were given
    views: np.ndarray  # [N] views seen per video


class ViewAggregator:
    """Running per-video aggregation of view scores, memory constant in the number of views.

    Holds one ``[K]`` running sum and a view count per video id (O(N·K) memory whatever V is), like
    the TestMeter of video codebases. ``add`` takes a batch of views — possibly several views of one
    video, possibly views of a video spread over many batches or ranks. Adding the same
    ``(video_id, view_index)`` twice is an error, so no video is ever counted twice.

    mode ``softmax_mean`` sums softmax(logits / temperature) per view (official, temperature 1);
    ``logit_mean`` sums the logits. ``result()`` divides by the views seen.
    """

    def __init__(self, num_classes: int, mode: ViewAggregation = "softmax_mean", temperature: float = 1.0):
        if mode not in ("softmax_mean", "logit_mean"):
            raise ValueError(f"view_aggregation must be 'softmax_mean' or 'logit_mean', got {mode!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_classes = int(num_classes)
        self.mode = mode
        self.temperature = float(temperature)
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._sum = np.zeros((16, self.num_classes), dtype=np.float64)
        self._count = np.zeros(16, dtype=np.int64)
        self._seen: list[int] = []  # bitmask of view indices per row
        self._labels: list = []

    def __len__(self) -> int:
        return len(self._ids)

    def _row(self, vid: str, label) -> int:
        row = self._index.get(vid)
        if row is None:
            row = len(self._ids)
            if row == self._sum.shape[0]:
                self._sum = np.concatenate([self._sum, np.zeros_like(self._sum)])
                self._count = np.concatenate([self._count, np.zeros_like(self._count)])
            self._index[vid] = row
            self._ids.append(vid)
            self._seen.append(0)
            self._labels.append(label)
        elif label is not None and not np.array_equal(np.asarray(self._labels[row]), np.asarray(label)):
            raise ValueError(f"video {vid!r}: views disagree on the label ({self._labels[row]} vs {label})")
        return row

    def add(
        self,
        video_ids: Sequence[str],
        logits: ArrayLike,
        labels: Optional[ArrayLike] = None,
        view_indices: Optional[Sequence[int]] = None,
    ) -> None:
        """Add one batch of views: ``logits [B, K]``, ``video_ids`` and ``labels`` (``[B]`` or ``[B, K]``) per row."""
        x = to_numpy(logits).astype(np.float64, copy=False)
        if x.ndim != 2 or x.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [B, {self.num_classes}], got shape {x.shape}")
        if len(video_ids) != x.shape[0]:
            raise ValueError(f"{len(video_ids)} video ids for {x.shape[0]} rows")
        y = None if labels is None else to_numpy(labels)
        contrib = softmax(x, self.temperature) if self.mode == "softmax_mean" else x
        for i, vid in enumerate(video_ids):
            vid = str(vid)
            lab = None if y is None else (int(y[i]) if y.ndim == 1 else np.asarray(y[i]).copy())
            row = self._row(vid, lab)
            if view_indices is not None:
                bit = 1 << int(view_indices[i])
                if self._seen[row] & bit:
                    raise ValueError(f"video {vid!r}: view {int(view_indices[i])} added twice")
                self._seen[row] |= bit
            self._sum[row] += contrib[i]
            self._count[row] += 1

    def state(self) -> dict:
        """Plain-python state for gathering across ranks (``all_gather_object``)."""
        n = len(self._ids)
        return {
            "ids": list(self._ids),
            "sum": self._sum[:n].copy(),
            "count": self._count[:n].copy(),
            "seen": list(self._seen),
            "labels": list(self._labels),
        }

    def merge(self, state: dict) -> None:
        """Fold in another aggregator's :meth:`state` (views of a video must not overlap)."""
        for i, vid in enumerate(state["ids"]):
            row = self._row(vid, state["labels"][i])
            if self._seen[row] & state["seen"][i]:
                raise ValueError(f"video {vid!r}: the same view was aggregated on two ranks")
            self._seen[row] |= state["seen"][i]
            self._sum[row] += state["sum"][i]
            self._count[row] += state["count"][i]

    def result(self, expected_views: Optional[int] = None) -> AggregatedScores:
        """Mean scores per video ``[N, K]``; with ``expected_views`` every video must have that many."""
        n = len(self._ids)
        count = self._count[:n]
        if expected_views is not None:
            bad = np.nonzero(count != expected_views)[0]
            if len(bad):
                raise ValueError(
                    f"{len(bad)} video(s) have a view count other than {expected_views}, "
                    f"e.g. {self._ids[bad[0]]!r} with {int(count[bad[0]])}"
                )
        scores = self._sum[:n] / np.maximum(count, 1)[:, None]
        labels = None
        if n and all(lab is not None for lab in self._labels):
            labels = np.stack([np.asarray(lab) for lab in self._labels]).astype(np.int64)
        return AggregatedScores(list(self._ids), scores, labels, count.copy())
